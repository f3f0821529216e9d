-- examples/providers/alertmanager.lua (DESIGN §5, a Lua provider): the events it makes of every
-- Alertmanager fixture in tests/fixtures/alertmanager/, its type rules, and its refusals.
local cjson = require "cjson"
local fs = require "helpers.fs"

local SCRIPT = "examples/providers/alertmanager.lua"
local FIX = "tests/fixtures/alertmanager/"
local REQUEST = { headers = { ["content-type"] = "application/json" }, query = {} }

local provider = dofile(SCRIPT)

local function body(file)
  return cjson.decode((assert(fs.read(FIX .. file), "missing fixture " .. file)))
end

local function normalize(b)
  return provider.normalize(b, REQUEST)
end

-- No JSON null and no empty string anywhere in the events (absent = nil).
local function assert_clean(t, path)
  for k, v in pairs(t) do
    local p = path .. "." .. tostring(k)
    assert(v ~= cjson.null, "JSON null at " .. p)
    assert(v ~= "", "empty string at " .. p)
    if type(v) == "table" then assert_clean(v, p) end
  end
end

local CM = "cert-manager.CertManagerCertExpirySoon."
local X509 = "x509-certificate-exporter.CertificateRenewal."
local BB = "blackbox.BlackboxSslCertificateWillExpireSoon."

-- fixture -> the events, in order: fields each must have (certificate = certificate's fields;
-- absent = fields it must not have)
local CASES = {
  [CM .. "firing.json"] = { {
    type = "certificate.expiration.upcoming", provider_type = "CertManagerCertExpirySoon",
    id = "alertmanager:5d4c2a6b0f3e8d71:2025-03-11T00:12:45.123Z", occurred_at = 1741651965.123,
    certificate = { name = "shop-example-com-tls", issuer = "letsencrypt-prod", expires_at = 1743465600 },
    dashboard_url = "https://grafana.example.com/d/TvuRo2iMk/cert-manager",
    absent = { "hostname", "resolved", "error" },
  } },
  [CM .. "resolved.json"] = { {
    type = "certificate.expiration.upcoming", resolved = true,
    id = "alertmanager:5d4c2a6b0f3e8d71:2025-03-11T00:12:45.123Z:resolved",
    occurred_at = 1741759365.123, -- endsAt
    certificate = { expires_at = 1743465600 },
  } },
  ["cert-manager.CertManagerCertNotReady.firing.json"] = { {
    type = "certificate.issuance.failed", provider_type = "CertManagerCertNotReady",
    id = "alertmanager:a1b2c3d4e5f60718:2025-03-11T09:40:15.5Z", occurred_at = 1741686015.5,
    certificate = { name = "api-example-com-tls" },
    error = "This certificate has not been ready to serve traffic for at least 10m. If the cert is "
      .. "being renewed or there is another valid cert, the ingress controller _may_ be able to "
      .. "serve that instead.",
    absent = { "hostname", "resolved" },
  } },
  [X509 .. "firing.json"] = {
    {
      type = "certificate.expiration.upcoming", provider_type = "CertificateRenewal",
      id = "alertmanager:8e0f1a2b3c4d5e6f:2025-03-04T00:05:30Z", hostname = "shop.example.com",
      certificate = { name = "/etc/ssl/private/shop.example.com.pem", expires_at = 1743465600,
        serial_number = "4210589227340287839174929912234568312", issuer = "R11",
        domains = { "shop.example.com" } },
      absent = { "resolved" },
    },
    {
      type = "certificate.expiration.upcoming",
      id = "alertmanager:9f1e2d3c4b5a6978:2025-03-06T12:00:30Z", hostname = "www.example.com",
      certificate = { name = "www-example-com-tls", expires_at = 1743681600 },
    },
  },
  [X509 .. "resolved.json"] = {
    { type = "certificate.expiration.upcoming", resolved = true, hostname = "shop.example.com",
      id = "alertmanager:8e0f1a2b3c4d5e6f:2025-03-04T00:05:30Z:resolved", occurred_at = 1741317330 },
    { type = "certificate.expiration.upcoming", resolved = true, hostname = "www.example.com",
      id = "alertmanager:9f1e2d3c4b5a6978:2025-03-06T12:00:30Z:resolved" },
  },
  ["x509-certificate-exporter.CertificateExpired.firing.json"] = { {
    type = "certificate.expiration.reached", provider_type = "CertificateExpired",
    hostname = "shop.example.com", certificate = { expires_at = 1743465600 },
  } },
  [BB .. "firing.json"] = { {
    type = "certificate.expiration.upcoming", provider_type = "BlackboxSslCertificateWillExpireSoon",
    id = "alertmanager:c0ffee0123456789:2025-03-11T06:00:00Z", occurred_at = 1741672800,
    hostname = "shop.example.com", -- from instance "https://shop.example.com"
    certificate = { expires_at = 1743465600, domains = { "shop.example.com" } }, -- "1.7434656e+09"
  } },
  [BB .. "resolved.json"] = { {
    type = "certificate.expiration.upcoming", resolved = true, hostname = "shop.example.com",
    id = "alertmanager:c0ffee0123456789:2025-03-11T06:00:00Z:resolved", occurred_at = 1741761000,
  } },
  ["blackbox.BlackboxSslCertificateExpired.firing.json"] = { {
    type = "certificate.expiration.reached", hostname = "legacy.example.com", -- "legacy.example.com:443"
    certificate = { expires_at = 1743552000 },
  } },
  ["sample-v4.ProbeFailure.json"] = { {
    type = "unknown", provider_type = "ProbeFailure", hostname = "server.example.org",
    id = "alertmanager:1a30ba71cca2921f:2023-02-06T13:08:45.828Z",
    absent = { "error", "resolved" },
  } },
}

local function check_fields(actual, expected, path)
  for k, want in pairs(expected) do
    local got = actual[k]
    if k == "absent" then
      for _, field in ipairs(want) do assert.is_nil(actual[field], path .. "." .. field .. " must be absent") end
    elseif type(want) == "table" then
      assert(type(got) == "table", ("%s.%s: expected a table, got %s"):format(path, k, tostring(got)))
      check_fields(got, want, path .. "." .. k)
      if #want > 0 then assert.are.equal(#want, #got, path .. "." .. k .. " length") end
    elseif type(want) == "number" then
      assert(type(got) == "number" and math.abs(got - want) < 1e-6,
        ("%s.%s: expected %s, got %s"):format(path, k, want, tostring(got)))
    else
      assert.are.equal(want, got, path .. "." .. k)
    end
  end
end

describe("examples/providers/alertmanager.lua", function()
  it("is a provider table named alertmanager", function()
    assert.are.equal("alertmanager", provider.name)
    assert.are.equal("function", type(provider.normalize))
  end)

  it("is plain Lua: no require, and it runs with only the base library, string, table, math", function()
    local src = assert(fs.read(SCRIPT))
    assert.is_nil(src:find("require%s*[%(\"']"))
    local env = { ipairs = ipairs, pairs = pairs, next = next, type = type, tostring = tostring,
      tonumber = tonumber, error = error, string = string, table = table, math = math }
    local p = assert(loadfile(SCRIPT, "t", env))()
    local events = p.normalize(body(X509 .. "firing.json"), REQUEST)
    assert.are.equal(2, #events)
  end)

  it("has an expectation for every fixture", function()
    local out = fs.run("ls " .. FIX)
    local n = 0
    for f in out:gmatch("[^\n]+") do
      assert(CASES[f], "no expectation for fixture " .. f)
      n = n + 1
    end
    assert(n >= 10, "fixtures missing")
  end)

  for file, wants in pairs(CASES) do
    it(file, function()
      local events = normalize(body(file))
      assert.are.equal(#wants, #events, file .. ": number of events")
      for i, want in ipairs(wants) do
        local e = events[i]
        assert_clean(e, "events[" .. i .. "]")
        check_fields(e, want, "events[" .. i .. "]")
        assert.are.equal(e.certificate, e.certificates and e.certificates[1])
        assert.are.equal("table", type(e.metadata.labels))
        assert.are.equal(e.provider_type, e.metadata.labels.alertname)
      end
    end)
  end

  it("gives a repeat notification of one firing the same id, and a new firing a new one", function()
    local a, b = normalize(body(BB .. "firing.json")), normalize(body(BB .. "firing.json"))
    assert.are.equal(a[1].id, b[1].id)
    local again = body(BB .. "firing.json")
    again.alerts[1].startsAt = "2025-03-20T06:00:00Z"
    assert.are_not.equal(a[1].id, normalize(again)[1].id)
  end)

  it("calls a certificate expired when its not_after is not after the alert's start", function()
    local b = body(BB .. "firing.json")
    b.alerts[1].annotations.not_after = "2025-03-11T06:00:00Z" -- == startsAt
    local e = normalize(b)[1]
    assert.are.equal("certificate.expiration.reached", e.type)
    assert.are.equal(1741672800, e.certificate.expires_at)
  end)

  it("takes a canonical type from a certhook_type label or annotation", function()
    local b = body("sample-v4.ProbeFailure.json")
    b.alerts[1].labels.certhook_type = "certificate.deployment.failed"
    assert.are.equal("certificate.deployment.failed", normalize(b)[1].type)
    b.alerts[1].labels.certhook_type = nil
    b.alerts[1].annotations.certhook_type = "certificate.renewal.failed"
    assert.are.equal("certificate.renewal.failed", normalize(b)[1].type)
    b.alerts[1].annotations.certhook_type = "rm -rf /" -- not a type: the rules decide
    assert.are.equal("unknown", normalize(b)[1].type)
  end)

  it("reads expiry times in the formats Prometheus templates print", function()
    local b = body("sample-v4.ProbeFailure.json")
    local a = b.alerts[1]
    local cases = {
      { "1743465600", 1743465600 },
      { "1.7434656e+09", 1743465600 },
      { "2025-04-01T00:00:00Z", 1743465600 },
      { "2025-04-01T02:00:00+02:00", 1743465600 },
      { "2025-03-31T19:00:00.25-05:00", 1743465600.25 },
      { "2025-04-01 00:00:00 +0000 UTC", 1743465600 },
      { "2028-02-29T00:00:00Z", 1835395200 },
    }
    for _, c in ipairs(cases) do
      a.annotations.not_after = c[1]
      local e = normalize(b)[1]
      assert.are.equal(c[2], e.certificate.expires_at, c[1])
      assert.are.equal("certificate.expiration.upcoming", e.type, c[1]) -- an expiry makes it one
    end
    a.annotations.not_after = "next tuesday"
    assert.is_nil(normalize(b)[1].certificate.expires_at)
  end)

  it("takes the expiry from a Grafana alert's value when that is an epoch time", function()
    local b = body("sample-v4.ProbeFailure.json")
    b.alerts[1].values = { B = 1743465600 }
    assert.are.equal(1743465600, normalize(b)[1].certificate.expires_at)
    b.alerts[1].values = { B = 20.75 } -- days left: not a time
    assert.is_nil(normalize(b)[1].certificate.expires_at)
  end)

  it("finds hostnames in blackbox targets, not in IP addresses", function()
    local b = body("sample-v4.ProbeFailure.json")
    local cases = {
      ["https://Shop.Example.com:8443/health?x=1"] = "shop.example.com",
      ["shop.example.com:443"] = "shop.example.com",
      ["tcp://user@mail.example.com:465"] = "mail.example.com",
      ["192.0.2.1:443"] = false,
      ["https://[2001:db8::1]:443/"] = false,
    }
    for instance, want in pairs(cases) do
      b.alerts[1].labels.instance = instance
      assert.are.equal(want or nil, normalize(b)[1].hostname, instance)
    end
  end)

  it("keys an alert without a fingerprint (old Alertmanager) by its labels", function()
    local b = body(X509 .. "firing.json")
    b.alerts[1].fingerprint, b.alerts[2].fingerprint = nil, nil
    local e = normalize(b)
    assert.are_not.equal(e[1].id, e[2].id)
    assert.are.equal(e[1].id, normalize(b)[1].id)
    assert.truthy(e[1].id:find("^alertmanager:{alertname=CertificateRenewal,"))
  end)

  it("raises on what is not an Alertmanager webhook (intake journals it as unknown)", function()
    local ok, err = pcall(provider.normalize, { version = "4" }, REQUEST)
    assert.is_false(ok)
    assert.are.equal("not an Alertmanager webhook: no alerts array", err)
    ok, err = pcall(provider.normalize, { alerts = { "x" } }, REQUEST)
    assert.is_false(ok)
    assert.truthy(err:find("alerts[1] is not an object", 1, true))
    ok = pcall(provider.normalize, "text", REQUEST)
    assert.is_false(ok)
  end)

  it("leaves the body it is given as it was", function()
    local b = body("sample-v4.ProbeFailure.json")
    b.alerts[1].annotations = nil
    local before = cjson.encode(b)
    normalize(b)
    assert.are.equal(before, cjson.encode(b))
  end)
end)

-- The same fixtures through certhook's own path: a source { provider = "lua", script = SCRIPT },
-- the script in its own limited state, the events copied back, finished by intake's rules.
describe("examples/providers/alertmanager.lua as a Lua provider", function()
  local core = require "helpers.core"

  local function through_certhook(file)
    local text = assert(fs.read(FIX .. file))
    return assert(core.cli.normalize(text, { provider = "lua", script = SCRIPT, source = "am" })), text
  end

  for file, wants in pairs(CASES) do
    it(file, function()
      local events = through_certhook(file)
      assert.are.equal(#wants, #events, file .. ": number of events")
      for i, want in ipairs(wants) do
        local e = events[i]
        check_fields(e, want, "events[" .. i .. "]")
        assert.are.equal("alertmanager", e.provider)
        assert.are.equal("am", e.source)
        assert.are.same(body(file), e.raw)
        assert.are.equal(e.certificate, e.certificates and e.certificates[1])
      end
    end)
  end

  it("journals what is no Alertmanager webhook as unknown, with the script's error", function()
    local events = assert(core.cli.normalize('{"version":"4"}', { provider = "lua", script = SCRIPT, source = "am" }))
    assert.are.equal(1, #events)
    assert.are.equal("unknown", events[1].type)
    assert.are.equal("alertmanager: not an Alertmanager webhook: no alerts array", events[1].error)
  end)
end)
