"""The ``entropy`` worker: Shannon entropy of a payload, of each of its blocks, and its most random block."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from stoq.plugin import Payload, PluginOptions, Result, WorkerPlugin

#: Decimal places of the entropies reported.
PLACES = 6


class EntropyPlugin(WorkerPlugin):
    """Measures the Shannon entropy of a payload (bits per byte, 0 to 8), per block, and its highest-entropy block.

    Output: ``{"entropy", "examined", "block_size", "blocks" (each block's entropy, in order; a shorter
    last block included), "blocks_total", "highest": {"offset", "size", "entropy"} or null}``, entropies
    rounded to 6 places. ``highest`` is the first block of the highest entropy among all blocks, listed
    or not. Flags: ``limit:entropy-blocks`` when ``max_blocks`` cut ``blocks``, ``limit:entropy-size``
    when only the first ``max_size`` bytes were examined.
    """

    name = "entropy"
    version = "1.0"

    class Options(PluginOptions):
        block_size: int = Field(4096, ge=64, description="Size of the blocks measured one by one, in bytes.")
        max_blocks: int = Field(1024, ge=0, description="Most block entropies listed in `blocks`.")
        max_size: int = Field(256 * 1024 * 1024, ge=1, description="Most bytes examined, from the start.")

    def setup(self) -> None:
        import stoq_plugins._entropy  # noqa: F401  numpy, before a pool forks (every command loads this module)

    def scan(self, payload: Payload, options: Options) -> Result:
        from stoq_plugins._entropy import measure

        data = payload.content[:options.max_size]
        whole, blocks = measure(data, options.block_size)
        entropies = blocks.round(PLACES)
        highest: dict[str, Any] | None = None
        if len(entropies):
            best = int(entropies.argmax())  # the first of the highest
            start = best * options.block_size
            highest = {"offset": start, "size": min(options.block_size, len(data) - start),
                       "entropy": float(entropies[best])}
        flags = (["limit:entropy-blocks"] if len(entropies) > options.max_blocks else []) + (
            ["limit:entropy-size"] if payload.size > options.max_size else [])
        return Result(data={"entropy": round(whole, PLACES), "examined": len(data), "block_size": options.block_size,
                            "blocks": entropies[:options.max_blocks].tolist(), "blocks_total": len(entropies),
                            "highest": highest}, flags=flags)
