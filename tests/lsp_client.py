"""A minimal Language Server Protocol client for the tests: drive the real yaml-language-server over stdio.

Found as ``$YAML_LANGUAGE_SERVER``, on ``PATH``, or where ``.ci/run`` installs it
(``.ci/node_modules/.bin``); :func:`server_command` is None when it is nowhere, and the editor
tests skip, saying so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def server_command() -> list[str] | None:
    """The command that starts yaml-language-server on stdio, or None."""
    found = os.environ.get("YAML_LANGUAGE_SERVER") or shutil.which("yaml-language-server")
    local = ROOT / ".ci" / "node_modules" / ".bin" / "yaml-language-server"
    if not found and local.exists():
        found = str(local)
    return [found, "--stdio"] if found else None


class LanguageServer:
    """One yaml-language-server process: open a document, ask for hover text and completions."""

    def __init__(self, command: list[str], root: Path) -> None:
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL)
        self.next_id = 0
        self.request("initialize", {"processId": os.getpid(), "rootUri": root.as_uri(), "capabilities": {
            "textDocument": {"hover": {"contentFormat": ["markdown", "plaintext"]},
                             "completion": {"completionItem": {"snippetSupport": True}}}}})
        self.notify("initialized", {})
        self.notify("workspace/didChangeConfiguration", {"settings": {"yaml": {
            "validate": True, "hover": True, "completion": True, "schemas": {}}}})

    def _send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        body = json.dumps(message).encode()
        self.process.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.process.stdin.flush()

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        headers = {}
        while line := self.process.stdout.readline().decode().strip():
            key, _, value = line.partition(":")
            headers[key.lower()] = value.strip()
        return json.loads(self.process.stdout.read(int(headers["content-length"])))

    def notify(self, method: str, params: dict[str, Any]) -> None:
        self._send({"jsonrpc": "2.0", "method": method, "params": params})

    def request(self, method: str, params: dict[str, Any]) -> Any:
        self.next_id += 1
        ident = self.next_id
        self._send({"jsonrpc": "2.0", "id": ident, "method": method, "params": params})
        while True:
            message = self._read()
            if message.get("id") == ident and "method" not in message:
                return message.get("result")
            if "method" in message and "id" in message:  # the server asks: settings, or nothing
                items = message.get("params", {}).get("items", [])
                answer = [{"validate": True, "hover": True, "completion": True}] * len(items) \
                    if message["method"] == "workspace/configuration" else None
                self._send({"jsonrpc": "2.0", "id": message["id"], "result": answer})

    def open(self, path: Path) -> str:
        uri = path.resolve().as_uri()
        self.notify("textDocument/didOpen", {"textDocument": {
            "uri": uri, "languageId": "yaml", "version": 1, "text": path.read_text(encoding="utf-8")}})
        return uri

    def hover(self, uri: str, line: int, character: int) -> str:
        found = self.request("textDocument/hover", {"textDocument": {"uri": uri},
                                                    "position": {"line": line, "character": character}})
        return "" if not found else found["contents"]["value"]

    def completions(self, uri: str, line: int, character: int) -> list[str]:
        found = self.request("textDocument/completion", {"textDocument": {"uri": uri},
                                                         "position": {"line": line, "character": character}})
        items = found["items"] if isinstance(found, dict) else (found or [])
        return [item["label"] for item in items]

    def close(self) -> None:
        self.process.kill()
        self.process.wait(10)
