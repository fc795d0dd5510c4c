"""One ComfyUI client per server, all on the daemon's shared HTTP session."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp

from socialsync.common.servers import ComfyAuth
from socialsync.daemon.comfy.client import ComfyClient, OnCall
from socialsync.daemon.settings import ComfySettings


class ComfyPool:
    def __init__(self, session: aiohttp.ClientSession, settings: ComfySettings, client_id: str,
                 on_call: OnCall | None = None, auth_for: Callable[[int], str | None] | None = None):
        self.session = session
        self.on_call = on_call  # metrics hook, given to every client
        self.settings = settings
        self.client_id = client_id
        # A server's own credentials (the JSON of its comfy_auth column), else the settings'.
        self.auth_for = auth_for
        self._clients: dict[tuple[int, str, str | None], ComfyClient] = {}

    def client(self, server_id: int, base_url: str) -> ComfyClient:
        own = self.auth_for(server_id) if self.auth_for is not None else None
        key = (server_id, base_url, own)
        found = self._clients.get(key)
        if found is None:
            for old in [k for k in self._clients if k[0] == server_id]:
                del self._clients[old]
            s = self.settings
            auth, token = ComfyAuth.credentials(own)
            if own is None:  # none of its own: the settings'
                if s.username and s.password is not None:
                    auth = (s.username, s.password.get_secret_value())
                elif s.token is not None:
                    token = s.token.get_secret_value()
            found = ComfyClient(base_url, session=self.session, client_id=self.client_id, auth=auth,
                                bearer_token=token, timeout=s.request_timeout, on_call=self.on_call)
            self._clients[key] = found
        return found

    def forget(self, server_id: int) -> None:
        for old in [k for k in self._clients if k[0] == server_id]:
            del self._clients[old]
