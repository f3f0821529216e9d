-- certhook configuration: a Lua file whose globals are the settings (README, Configuration).
-- Relative paths are relative to this file. Secrets come from the environment, not the file.

listen = "127.0.0.1:8080"   -- webhooks: POST /hooks/<source>
admin = "127.0.0.1:9090"    -- /healthz, /readyz, /metrics, POST /reload (loopback only, or
                            -- set admin_token = os.getenv("CERTHOOK_ADMIN_TOKEN"))
handlers = "handlers"       -- every *.lua in it, loaded in name order
data = "../certhook-data"   -- the journal (SQLite, WAL); the systemd unit passes --data

sources = {
  -- Cloudflare notifications (SSL for SaaS, certificate alerts): the secret of the webhook
  -- destination, sent by Cloudflare in the cf-webhook-auth header.
  cloudflare = { provider = "cloudflare", secret = os.getenv("CF_WEBHOOK_SECRET") },
}

-- IBM Cloud Certificate Manager callbacks: the instance's public key (Notifications >
-- Download Key) verifies the RS256-signed body.
if os.getenv("IBM_CM_PUBLIC_KEY") then
  sources.ibm = { provider = "ibm-cm", public_key = os.getenv("IBM_CM_PUBLIC_KEY") }
end

-- HTTPS on the webhook listener (or terminate TLS in a proxy in front); Mozilla's
-- "intermediate" suites unless ciphers (a GnuTLS priority string) says otherwise:
-- tls = { cert = "/etc/certhook/tls.crt", key = "/etc/certhook/tls.key", min_version = "1.2" }

-- max_connections_per_ip: behind a reverse proxy every connection comes from it: set 0 there.
limits = { max_body = 1048576, max_header = 8192, max_connections = 1024,
           max_connections_per_ip = 64, request_timeout = 10, max_backlog = 10000 }
log = { level = "info" }
