"""One ComfyUI client per server, all on the daemon's shared HTTP session."""

from __future__ import annotations

import aiohttp

from socialsync.daemon.comfy.client import ComfyClient, OnCall
from socialsync.daemon.settings import ComfySettings


class ComfyPool:
    def __init__(self, session: aiohttp.ClientSession, settings: ComfySettings, client_id: str,
                 on_call: OnCall | None = None):
        self.session = session
        self.on_call = on_call  # metrics hook, given to every client
        self.settings = settings
        self.client_id = client_id
        self._clients: dict[tuple[int, str], ComfyClient] = {}

    def client(self, server_id: int, base_url: str) -> ComfyClient:
        key = (server_id, base_url)
        found = self._clients.get(key)
        if found is None:
            for old in [k for k in self._clients if k[0] == server_id]:
                del self._clients[old]
            s = self.settings
            auth = None
            if s.username and s.password is not None:
                auth = (s.username, s.password.get_secret_value())
            token = s.token.get_secret_value() if s.token is not None and auth is None else None
            found = ComfyClient(base_url, session=self.session, client_id=self.client_id, auth=auth,
                                bearer_token=token, timeout=s.request_timeout, on_call=self.on_call)
            self._clients[key] = found
        return found

    def forget(self, server_id: int) -> None:
        for old in [k for k in self._clients if k[0] == server_id]:
            del self._clients[old]
