-- Per-server ComfyUI credentials (a rented box behind an authenticating proxy, or an
-- attached one): {"username", "password"} or {"token"} as JSON; NULL: none of its own.
ALTER TABLE servers ADD COLUMN comfy_auth TEXT;
