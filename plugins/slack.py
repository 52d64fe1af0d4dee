"""The ``slack`` connector: a summary of each finished scan (or of those matching a filter) posted to a channel."""

from __future__ import annotations

from typing import Any, Iterable

from pydantic import Field, SecretStr

from stoq.plugin import ConnectorOptions, ConnectorPlugin, Extra
from stoq_plugins._slack import summary, wanted


class SlackConnector(ConnectorPlugin):
    """Posts a few lines per finished scan document (root file, type, size, sha256, payload count, YARA
    rules, flags, errors) to a Slack channel with ``chat.postMessage``; optionally only the documents
    where a YARA rule matched or a payload has one of the given flags.

    Sends, per posted document: ``POST {url}chat.postMessage`` with ``Authorization: Bearer <api_key>``
    and the JSON body ``{"channel", "text"}`` (the summary). Nothing else of the document leaves.
    slack_sdk retries an answer of 429 after its ``Retry-After`` (at most ``retries`` times). A failure
    (bad token, unknown channel) fails the connector's delivery, which stoq reports; the scan is stored.
    The Slack bot that scans shared files is ``python -m stoq_plugins._slack`` (docs/plugins/slack.md).
    """

    name = "slack"
    version = "1.0"
    extras = (Extra("slack_sdk", "pip install 'stoq-analysis[slack]'", "post to Slack"),)

    class Options(ConnectorOptions):
        url: str = Field("https://slack.com/api/", description="Slack Web API's base URL.")
        api_key: SecretStr = Field(SecretStr(""), description="Bot token (xoxb-...); never logged or stored.")
        channel: str = Field("", description="Channel id or name to post to (required).")
        only_flags: list[str] = Field(default_factory=list, description="Post only documents with a flag starting "
                                                                        "with one of these (e.g. vtmis:detected).")
        only_yara: bool = Field(False, description="Post only documents where a YARA rule matched "
                                                   "(with only_flags: either).")
        retries: int = Field(3, ge=0, le=10, description="Retries of a post answered 429 (rate limited).")
        timeout: float = Field(30.0, gt=0, description="Seconds to wait for Slack's answer.")

    def setup(self) -> None:
        if not self.options.channel:
            raise ValueError("slack.channel is not set (-o slack.channel=C0123456789)")
        try:
            from slack_sdk import WebClient
            from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
        except ImportError as exc:
            raise ValueError("slack needs slack_sdk: pip install 'stoq-analysis[slack]'") from exc
        self.client = WebClient(token=self.options.api_key.get_secret_value() or None, base_url=self.options.url,
                                timeout=int(self.options.timeout),
                                retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=self.options.retries)])

    def save(self, documents: Iterable[dict[str, Any]]) -> None:
        for doc in documents:
            if wanted(doc, self.options.only_flags, self.options.only_yara):
                self.client.chat_postMessage(channel=self.options.channel, text=summary(doc))
