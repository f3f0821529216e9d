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

-- The other providers (README, Providers), each when its secret is in the environment:
-- AWS Certificate Manager through an EventBridge API destination (its API key in x-api-key)
-- and/or an SNS topic (signatures verified, the subscription confirmed).
if os.getenv("ACM_API_KEY") or os.getenv("ACM_SNS_TOPIC") then
  sources.acm = { provider = "aws-acm", secret = os.getenv("ACM_API_KEY"),
                  sns = os.getenv("ACM_SNS_TOPIC") and { topic_arns = { os.getenv("ACM_SNS_TOPIC") },
                                                          confirm = true } or nil }
end
-- Azure Key Vault through Event Grid: https://host/hooks/kv?key=<EVENTGRID_KEY>
if os.getenv("EVENTGRID_KEY") then
  sources.kv = { provider = "azure-keyvault", secret = os.getenv("EVENTGRID_KEY") }
end
-- IBM Cloud Secrets Manager through Event Notifications: Authorization: Bearer <token>
if os.getenv("SM_WEBHOOK_TOKEN") then
  sources.sm = { provider = "ibm-sm", secret = os.getenv("SM_WEBHOOK_TOKEN") }
end
-- DigiCert CertCentral: the webhook's secret, sent in X-WEBHOOK-KEY
if os.getenv("DIGICERT_WEBHOOK_KEY") then
  sources.digicert = { provider = "digicert", secret = os.getenv("DIGICERT_WEBHOOK_KEY") }
end
-- Prometheus Alertmanager, a provider written in Lua: Authorization: Bearer <AM_TOKEN>
if os.getenv("AM_TOKEN") then
  sources.am = { provider = "lua", script = "providers/alertmanager.lua", secret = os.getenv("AM_TOKEN") }
end

-- HTTPS on the webhook listener (or terminate TLS in a proxy in front); Mozilla's
-- "intermediate" suites unless ciphers (a GnuTLS priority string) says otherwise:
-- tls = { cert = "/etc/certhook/tls.crt", key = "/etc/certhook/tls.key", min_version = "1.2" }

-- max_connections_per_ip: behind a reverse proxy every connection comes from it: set 0 there.
limits = { max_body = 1048576, max_header = 8192, max_connections = 1024,
           max_connections_per_ip = 64, request_timeout = 10, max_backlog = 10000 }
log = { level = "info" }
