-- Prometheus Alertmanager webhooks (webhook_config, payload version 4) as certificate events:
-- one event per alert, for the alerts cert-manager, x509-certificate-exporter and the blackbox
-- exporter raise (DESIGN §5, a Lua provider). Plain Lua 5.4, no require.
--
--   sources = { am = { provider = "lua", script = "/etc/certhook/providers/alertmanager.lua",
--                      secret = os.getenv("AM_TOKEN"), header = "authorization" } }
--
-- Type of an alert, the first rule that applies:
--   1. a label or annotation certhook_type naming a canonical type ("certificate.renewal.failed")
--   2. certificate.issuance.failed: the alertname (any case) has NotReady, Issu...Fail or
--      RateLimit (CertManagerCertNotReady, CertManagerHittingRateLimits)
--   3. certificate.expiration.reached: the alertname has Expired (CertificateExpired,
--      BlackboxSslCertificateExpired), or the not_after is not after the alert's startsAt
--   4. certificate.expiration.upcoming: the alertname has Expir or Renew
--      (CertManagerCertExpirySoon, CertificateRenewal, BlackboxSslCertificateWillExpireSoon),
--      or a not_after is known
--   5. unknown: anything else (provider_type keeps the alertname)
-- A resolved alert keeps its type and has resolved = true; its id ends in ":resolved" so that it
-- is not taken for a duplicate of the firing notification.
--
-- Fields: id "alertmanager:<fingerprint>:<startsAt>" (the same for every repeat of one firing);
-- provider_type the alertname; occurred_at startsAt (endsAt when resolved); hostname the first
-- of the labels or annotations hostname, subject_CN, common_name, then the host of instance
-- (blackbox targets: "https://shop.example.com", "shop.example.com:443"); expires_at from a
-- label or annotation not_after, expires_at, expiry or expiration -- epoch seconds ("1743465600",
-- "1.7434656e+09": what {{ $value }} prints), RFC 3339, or humanizeTimestamp's
-- "2025-04-01 00:00:00 +0000 UTC" -- else from the alert's value (Grafana's "value"/"values")
-- when that is an epoch time (over 1e9). Rule expressions that make $value the expiry itself:
--   x509_cert_not_after < time() + 28 * 86400
--   probe_ssl_earliest_cert_expiry < time() + 21 * 86400
-- with the annotation  not_after: '{{ $value | printf "%.0f" }}'.
-- metadata holds the alert's labels and annotations, the receiver and the generator URL.

local function str(v)
  if type(v) == "string" and v ~= "" then return v end
  if type(v) == "number" then return tostring(v) end
  return nil
end

-- First non-empty string among the keys, in a.labels then a.annotations.
local function pick(a, ...)
  for _, key in ipairs({ ... }) do
    local v = str(a.labels[key]) or str(a.annotations[key])
    if v then return v end
  end
  return nil
end

-- Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
local function days_from_civil(y, m, d)
  y = m <= 2 and y - 1 or y
  local era = (y >= 0 and y or y - 399) // 400
  local yoe = y - era * 400
  local doy = (153 * (m + (m > 2 and -3 or 9)) + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  return era * 146097 + doe - 719468
end

-- Epoch seconds of "1743465600", "1.7434656e+09", "2025-04-01T00:00:00Z",
-- "2025-04-01T02:00:00.5+02:00" or "2025-04-01 00:00:00 +0000 UTC"; nil otherwise.
local function epoch(v)
  if type(v) == "number" then return v end
  if type(v) ~= "string" then return nil end
  local n = tonumber(v)
  if n then return n end
  local y, mo, d, h, mi, s, frac, zone =
    v:match("^(%d%d%d%d)%-(%d%d)%-(%d%d)[T ](%d%d):(%d%d):(%d%d)(%.?%d*)%s*(.-)$")
  if not y then return nil end
  local offset = 0
  if zone ~= "" and zone ~= "Z" then
    local sign, oh, om = zone:match("^([+-])(%d%d):?(%d%d)")
    if not sign then return nil end
    offset = (tonumber(oh) * 3600 + tonumber(om) * 60) * (sign == "-" and -1 or 1)
  end
  local t = days_from_civil(tonumber(y), tonumber(mo), tonumber(d)) * 86400 +
    tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(s) - offset
  if frac ~= "" and frac ~= "." then t = t + tonumber("0" .. frac) end
  return t
end

-- Alertmanager's "no end" time.
local function time_or_nil(v)
  if v == nil or v == "0001-01-01T00:00:00Z" then return nil end
  return epoch(v)
end

-- The host of a blackbox target: "https://shop.example.com:8443/health" -> "shop.example.com".
local function host_of(instance)
  if not instance then return nil end
  local h = instance:gsub("^%a[%w+.-]*://", ""):gsub("[/?#].*$", ""):gsub("^.*@", "")
  if h:match("^%[") then return nil end -- an IPv6 literal is no hostname
  h = h:gsub(":%d*$", "")
  if h == "" or not h:find("%a") then return nil end -- empty, or an IPv4 address
  return h:lower()
end

-- expires_at of the alert's certificate (see the header); nil when nothing says it.
local function expiry(a)
  local t = epoch(pick(a, "not_after", "expires_at", "expiry", "expiration"))
  if t then return t end
  local value = a.value
  if value == nil and type(a.values) == "table" then
    local only, count = nil, 0
    for _, v in pairs(a.values) do only, count = v, count + 1 end
    if count == 1 then value = only end
  end
  value = epoch(value)
  if value and value > 1e9 then return value end
  return nil
end

local function canonical_type(a, name, expires_at, starts)
  local explicit = pick(a, "certhook_type")
  if explicit and (explicit:match("^certificate%.%l+%.%l+$") or explicit == "notification.test"
      or explicit == "unknown") then
    return explicit
  end
  local n = name:lower()
  if n:find("notready", 1, true) or n:find("issu%a*fail") or n:find("ratelimit", 1, true) then
    return "certificate.issuance.failed"
  end
  if n:find("expired", 1, true) or (expires_at and starts and expires_at <= starts) then
    return "certificate.expiration.reached"
  end
  if n:find("expir", 1, true) or n:find("renew", 1, true) or expires_at then
    return "certificate.expiration.upcoming"
  end
  return "unknown"
end

-- A stable key for an alert without a fingerprint (Alertmanager before 0.19): its labels.
local function labels_key(labels)
  local keys = {}
  for k in pairs(labels) do keys[#keys + 1] = k end
  table.sort(keys)
  for i, k in ipairs(keys) do keys[i] = k .. "=" .. tostring(labels[k]) end
  return "{" .. table.concat(keys, ",") .. "}"
end

-- The event of one alert; a = { labels, annotations, value, values } with tables always there.
local function event_of(alert, body)
  local a = {
    labels = type(alert.labels) == "table" and alert.labels or {},
    annotations = type(alert.annotations) == "table" and alert.annotations or {},
    value = alert.value,
    values = alert.values,
  }
  local name = str(a.labels.alertname) or "alertmanager"
  local resolved = alert.status == "resolved"
  local starts = time_or_nil(alert.startsAt)
  local expires_at = expiry(a)
  local hostname = pick(a, "hostname", "subject_CN", "common_name") or
    host_of(str(a.labels.instance))
  local type_ = canonical_type(a, name, expires_at, starts)
  local id = "alertmanager:" .. (str(alert.fingerprint) or labels_key(a.labels)) .. ":" ..
    (str(alert.startsAt) or "")
  if resolved then id = id .. ":resolved" end

  local certificate = {
    name = pick(a, "name", "secret_name", "filepath", "certificate"),
    expires_at = expires_at,
    serial_number = pick(a, "serial_number"),
    issuer = pick(a, "issuer_CN", "issuer_name", "issuer"),
    domains = hostname and { hostname } or nil,
  }
  local event = {
    id = id,
    type = type_,
    provider_type = name,
    occurred_at = resolved and time_or_nil(alert.endsAt) or starts,
    hostname = hostname,
    resolved = resolved or nil,
    error = type_ == "certificate.issuance.failed" and
      (str(a.annotations.description) or str(a.annotations.summary)) or nil,
    dashboard_url = str(a.annotations.dashboard_url) or str(alert.generatorURL),
    metadata = {
      labels = a.labels,
      annotations = a.annotations,
      receiver = str(body.receiver),
      generator_url = str(alert.generatorURL),
    },
  }
  if next(certificate) ~= nil then
    event.certificate = certificate
    event.certificates = { certificate }
  end
  return event
end

return {
  name = "alertmanager",
  normalize = function(body, request) -- request (headers, query) is not needed here
    if type(body) ~= "table" or type(body.alerts) ~= "table" then
      error("not an Alertmanager webhook: no alerts array", 0)
    end
    local events = {}
    for i, alert in ipairs(body.alerts) do
      if type(alert) ~= "table" then
        error(("not an Alertmanager webhook: alerts[%d] is not an object"):format(i), 0)
      end
      events[#events + 1] = event_of(alert, body)
    end
    return events
  end,
}
