"""The ``gpg`` extractor: OpenPGP messages (encrypted, signed, compressed; binary, ASCII-armored or
clear-signed) decrypted and verified by GnuPG with a configured keyring and passphrase."""

from __future__ import annotations

import shutil
from pathlib import Path

from pydantic import Field

from stoq.plugin import Extracted, ExtractorPlugin, Payload, PluginOptions, Result, tool_path
from stoq_plugins._gpg import GPG, Gpg, GpgError, remove_stale_homes

MiB = 1 << 20
#: What libmagic calls armored messages (binary ones are application/octet-stream: see the dispatch rule).
MIMES = frozenset({"application/pgp-encrypted", "application/pgp", "text/PGP", "application/pgp-signature"})
ARMOR = (b"-----BEGIN PGP MESSAGE-----", b"-----BEGIN PGP SIGNED MESSAGE-----")


def looks_like_openpgp(content: bytes) -> bool:
    """Cheap test: a packet header (high bit set) first, or an armor header after leading blank space."""
    if content[:1] and content[0] & 0x80:
        return True
    head = content[:1024].lstrip()
    return any(head.startswith(armor) for armor in ARMOR)


class GpgPlugin(ExtractorPlugin):
    """Decrypts and verifies OpenPGP messages with a configured keyring and passphrase; reports key ids.

    Each scan runs ``gpg --decrypt`` (GnuPG 2) in a private, temporary GNUPGHOME into which ``keyring``
    (an exported key file: secret keys to decrypt, public keys to check signatures) is imported; its
    gpg-agent (when gpg started one) is killed and the directory removed afterwards (``stoq_plugins._gpg``). ``passphrase``
    unlocks the secret keys or a symmetrically encrypted message; it is passed on stdin, never on the
    command line. No network is used: signers' keys are not fetched.

    Output: ``{"encrypted", "signed", "key_ids" (recipients' key ids, from ENC_TO), "signatures" (each
    ``{"key_id", "status" (GOODSIG, BADSIG, EXPSIG, EXPKEYSIG, REVKEYSIG, ERRSIG, or NO_PUBKEY when the
    signer's key is missing), "user_id", "fingerprint", "created"}``), "literal" (``{"filename",
    "format", "created", "size"}`` of the literal data packet, or None)}``. One child: the literal data
    (decrypted and/or verified), named after the literal packet. Flags: ``gpg:no-secret-key`` (no
    imported key opens the message), ``gpg:bad-passphrase`` (wrong or missing passphrase),
    ``gpg:decryption-failed`` (other failures, such as a damaged message), ``gpg:bad-signature``,
    ``corrupt:truncated`` (less data than the literal packet declares),
    ``limit:gpg-bytes`` (output over ``max_output_bytes``: no child), ``limit:tool-time`` (gpg killed
    after ``timeout``). Input of which gpg reads nothing raises.
    """

    name = "gpg"
    tools = (GPG,)
    files = ("keyring",)
    version = "1.0"
    mimes = MIMES

    class Options(PluginOptions):
        keyring: Path | None = Field(None, description="Exported key file (secret and/or public keys) imported "
                                                       "for each scan; none: no keys.")
        passphrase: str = Field("", description="Passphrase of the keyring's secret keys (or of symmetrically "
                                                "encrypted messages), given to gpg on stdin.")
        timeout: float = Field(30, gt=0, description="Seconds gpg may run on one payload (import included).")
        max_output_bytes: int = Field(256 * MiB, ge=0, description="Most decrypted bytes read; beyond, flag "
                                                                   "limit:gpg-bytes and give no child.")

    def setup(self) -> None:
        if shutil.which(GPG.command, path=tool_path()) is None:
            raise GPG.missing()
        self.worker_started()
        if self.options.keyring:  # a missing or unreadable keyring: an OSError naming the file
            open(self.options.keyring, "rb").close()
        if self.options.keyring:  # fail now, not on every payload, when it holds no key
            with Gpg(self.options.timeout, 0) as gpg:
                if gpg.import_keys(str(self.options.keyring)) == 0:
                    raise ValueError(f"gpg keyring {self.options.keyring!r} holds no OpenPGP key")

    def worker_started(self) -> None:
        remove_stale_homes()  # left by a worker killed during a run

    def accepts(self, payload: Payload) -> bool:
        return super().accepts(payload) and looks_like_openpgp(payload.content)

    def scan(self, payload: Payload, options: Options) -> Result:
        with Gpg(options.timeout, options.max_output_bytes) as gpg:
            if options.keyring:
                gpg.import_keys(str(options.keyring))
            run = gpg.decrypt(payload.content, options.passphrase)
        status, flags = run.status, []
        if run.stopped:
            flags.append(run.stopped)
        elif not status.seen:
            raise GpgError(f"no OpenPGP message: {run.log.strip()[-300:]} (gpg exit status {run.code})")
        if status.failed or (status.encrypted and not status.decrypted and not run.stopped):
            flags.append("gpg:bad-passphrase" if status.bad_passphrase
                         else "gpg:no-secret-key" if status.no_seckey or status.key_ids
                         else "gpg:decryption-failed")
        if any(sig["status"] == "BADSIG" for sig in status.signatures):
            flags.append("gpg:bad-signature")
        children = []
        if run.data is not None and status.literal is not None and not status.failed and (
                status.decrypted or not status.encrypted):
            literal = status.literal
            if literal["size"] is not None and literal["size"] != len(run.data):
                flags.append("corrupt:truncated")
            children.append(Extracted(run.data, filename=literal["filename"], meta=dict(literal)))
        return Result(data={"encrypted": status.encrypted, "signed": bool(status.signatures),
                            "key_ids": status.key_ids, "signatures": status.signatures, "literal": status.literal},
                      children=children, flags=flags)
