-- Normalization of every provider shape (DESIGN §2-3): one fixture per shape in
-- tests/fixtures/<provider>/, each checked against the documented fields.
local core = require "helpers.core"
local cjson = require "cjson"
local fs = require "helpers.fs"

local FIX = "tests/fixtures/"

local function normalize(file, opts)
  local body = assert(fs.read(FIX .. file), "missing fixture " .. file)
  local event, err = core.normalize(body, opts)
  assert(event, ("%s: %s"):format(file, tostring(err)))
  return event, body
end

-- No cjson.null and no empty string anywhere in the event outside raw; no JSON null left in
-- raw objects either (absent = nil).
local function assert_clean(t, path, in_raw)
  for k, v in pairs(t) do
    local p = path .. "." .. tostring(k)
    assert(v ~= cjson.null or (in_raw and math.type(k) == "integer"), "JSON null at " .. p)
    if not in_raw then assert(v ~= "", "empty string at " .. p) end
    if type(v) == "table" then assert_clean(v, p, in_raw or k == "raw") end
  end
end

local CRN = "crn:v1:bluemix:public:cloudcerts:us-south:a/30f0a21f77994b9eb414b37300e2ced1:91a17928-da3c-4465-9c4b-f1a6b4dce684"

-- fixture -> fields the event must have (nil in the table = must be absent when listed in
-- `absent`). Nested tables are compared field by field.
local CASES = {
  ["cloudflare/ssl.custom_hostname_certificate.validation.succeeded.json"] = {
    type = "certificate.validation.succeeded", status = { from = "pending_validation", to = "pending_issuance" },
  },
  ["cloudflare/ssl.custom_hostname_certificate.validation.failed.json"] = {
    type = "certificate.validation.failed", occurred_at = 1518134608.38508,
    status = { from = "pending_validation", to = "pending_validation" },
    validation = { method = "cname", domain = "blog.com", cname = "_ca3-64ce913ebfe74edeb2e8813e3928e359.app.example2.com",
      cname_target = "dcv.digicert.com", errors = { "blog.example.com reported as potential risk: google_safe_browsing" } },
    error = "blog.example.com reported as potential risk: google_safe_browsing",
  },
  ["cloudflare/ssl.custom_hostname_certificate.issuance.succeeded.json"] = {
    type = "certificate.issuance.succeeded", status = { to = "pending_deployment" }, absent = { "error" },
  },
  ["cloudflare/ssl.custom_hostname_certificate.issuance.failed.json"] = {
    type = "certificate.issuance.failed", error = "caa_error: blog.example.com",
    status = { from = "pending_issuance", to = "pending_issuance" },
  },
  ["cloudflare/ssl.custom_hostname_certificate.deployment.succeeded.json"] = {
    type = "certificate.deployment.succeeded", status = { from = "pending_deployment", to = "active" },
    certificate = { status = "active", type = "dv", method = "cname" },
  },
  ["cloudflare/ssl.custom_hostname_certificate.deployment.failed.json"] = {
    type = "certificate.deployment.failed", status = { from = "pending_deployment", to = "pending_deployment" },
  },
  ["cloudflare/ssl.custom_hostname_certificate.deletion.succeeded.json"] = {
    type = "certificate.deletion.succeeded", status = { from = "pending_deletion", to = "deleted" },
  },
  ["cloudflare/ssl.custom_hostname_certificate.deletion.failed.json"] = {
    type = "certificate.deletion.failed", status = { from = "pending_deletion", to = "pending_deletion" },
  },
  ["cloudflare/ssl.custom_hostname_certificate.renewal.upcoming_certificate_expiration_notification.json"] = {
    type = "certificate.expiration.upcoming", absent = { "status" },
    certificate = { id = "<<CERTIFICATE_ID>", status = "active", domains = { "blog.example.com" }, issuer = "DigiCertInc",
      serial_number = "1001172778337169491", signature = "ECDSAWithSHA256", uploaded_at = 1637123634.561747,
      expires_at = 1669032000, custom_csr_id = "7b163417-1d2b-4c84-a38a-2fb7a0cd7752",
      settings = { min_tls_version = "1.2", http2 = "on" } },
  },
  ["cloudflare/ssl.custom_hostname_certificate.renewal.succeeded.json"] = {
    type = "certificate.renewal.succeeded", status = { from = "active", to = "pending_deployment" },
  },
  ["cloudflare/ssl.custom_hostname_certificate.renewal.failed.json"] = {
    type = "certificate.renewal.failed", status = { from = "active", to = "pending_issuance" },
    error = "caa_error: blog.example.com",
  },
  ["cloudflare/ssl.custom_hostname_certificate.validation.failed.no-hostname.json"] = {
    type = "certificate.validation.failed", absent = { "hostname", "hostname_id" },
    certificate = { id = "<<CERTIFICATE_ID>" }, validation = { cname_target = "dcv.digicert.com" },
  },
  ["cloudflare/ssl.custom_hostname_certificate.unknown-type.json"] = {
    type = "unknown", provider_type = "ssl.custom_hostname_certificate.something.new", id = "cloudflare:unknown-0001",
  },
  ["cloudflare/envelope.universal_ssl_event_type.ssl.certificate.validation.failed.json"] = {
    type = "certificate.validation.failed", provider_type = "ssl.certificate.validation.failed",
    occurred_at = 1749793886, zone = "11111111111", account = "9035f53656c247e895c5a6939ae8a0e0",
    certificate = { id = "11111111111", method = "txt" },
    validation = { method = "txt", txt_name = "_acme-challenge.example.com", txt_value = "11111111111" },
    absent = { "hostname", "error", "status" }, hashed = true,
  },
  ["cloudflare/envelope.dedicated_ssl_certificate_event_type.ssl.dedicated_certificate.validation.failed.json"] = {
    type = "certificate.validation.failed", provider_type = "ssl.dedicated_certificate.validation.failed",
    certificate = { id = "11111111111" }, hashed = true,
  },
  ["cloudflare/envelope.custom_ssl_certificate_event_type.ssl.custom_hostname_certificate.issuance.failed.json"] = {
    type = "certificate.issuance.failed", provider_type = "ssl.custom_hostname_certificate.issuance.failed",
    id = "cloudflare:nested-0001", hostname = "blog.com", hostname_id = "<<CUSTOM_HOSTNAME_ID>",
    error = "caa_error: blog.example.com", occurred_at = 1644365008.38508,
  },
  ["cloudflare/alert.dedicated_ssl_certificate_event_type.flat.json"] = {
    type = "unknown", provider_type = "dedicated_ssl_certificate_event_type", occurred_at = 1136214245,
    account = "9035f53656c247e895c5a6939ae8a0e0", zone = "string", hostname = "string",
    certificate = { id = "string", status = "string", domains = { "string" } }, hashed = true,
  },
  ["cloudflare/alert.access_custom_certificate_expiration_type.json"] = {
    type = "certificate.expiration.upcoming", provider_type = "access_custom_certificate_expiration_type",
    occurred_at = 1136214245, days_to_expiry = 0, hashed = true,
    certificate = { id = "string", expires_at = 1136214245, expires_at_approximate = true },
  },
  ["cloudflare/alert.hostname_aop_custom_certificate_expiration_type.json"] = {
    type = "certificate.expiration.upcoming", hostname = "origin.example.com", days_to_expiry = 14,
    certificate = { id = "4ec9c1a4-9d32-4bb5-a1c4-0c1e0e2a7b91", domains = { "origin.example.com" },
      expires_at = 1136214245 + 14 * 86400, expires_at_approximate = true }, -- ts + the days
    zone = "023e105f4ecef8ad9ca31a8372d0c353",
  },
  ["cloudflare/alert.zone_aop_custom_certificate_expiration_type.json"] = {
    type = "certificate.expiration.upcoming", hostname = "example.com",
    certificate = { domains = { "example.com", "www.example.com" } },
  },
  ["cloudflare/alert.mtls_certificate_store_certificate_expiration_type.json"] = {
    type = "certificate.expiration.upcoming", absent = { "hostname" },
    certificate = { id = "4ec9c1a4-9d32-4bb5-a1c4-0c1e0e2a7b91" },
  },
  ["cloudflare/test-message.json"] = {
    type = "notification.test", absent = { "provider_type", "hostname", "certificate", "occurred_at" }, hashed = true,
  },
  ["cloudflare/envelope.minimal.json"] = {
    type = "unknown", occurred_at = 123456789, absent = { "provider_type", "certificate" }, hashed = true,
  },

  ["ibm-cm/v1.expiring.json"] = {
    type = "certificate.expiration.upcoming", payload_version = 1, required_action = "reimport",
    expiry_date = 1623283200, hostname = "example.com", absent = { "provider_type", "occurred_at" },
    certificates = { -- no expiry of their own: the day IBM says, known to a day
      { id = CRN .. ":certificate:a1", name = "example.com", domains = { "example.com", "www.example.com" },
        expires_at = 1623283200, expires_at_approximate = true },
      { id = CRN .. ":certificate:a2", expires_at = 1623283200, expires_at_approximate = true } },
    ncerts = 2,
  },
  ["ibm-cm/v2.cert_about_to_expire_reimport_required.json"] = {
    type = "certificate.expiration.upcoming", payload_version = 2, required_action = "reimport", expiry_date = 1623283200,
  },
  ["ibm-cm/v2.cert_expired_reimport_required.json"] = {
    type = "certificate.expiration.reached", payload_version = 2, required_action = "reimport", absent = { "expiry_date" },
  },
  ["ibm-cm/v2.cert_reimported.json"] = { type = "certificate.import.succeeded", payload_version = 2, absent = { "required_action" } },
  ["ibm-cm/v2.test_notification_channel.json"] = { type = "notification.test", payload_version = 2 },
  ["ibm-cm/v3.cert_about_to_expire_reimport_required.json"] = {
    type = "certificate.expiration.upcoming", payload_version = 3, certificate = { expires_at = 1623293628 },
    absent = { "certificate.expires_at_approximate" }, -- its own expiry, not the day
  },
  ["ibm-cm/v3.cert_expired_reimport_required.json"] = { type = "certificate.expiration.reached", payload_version = 3 },
  ["ibm-cm/v3.cert_reimported.json"] = { type = "certificate.import.succeeded", payload_version = 3 },
  ["ibm-cm/v3.test_notification_channel.json"] = { type = "notification.test", payload_version = 3 },
  ["ibm-cm/v4.cert_issued.json"] = {
    type = "certificate.issuance.succeeded", payload_version = 4, provider_type = "cert_issued",
    instance = CRN .. "::", dashboard_url = "https://cloud.ibm.com/services/cloudcerts/crn%3Av1%3Abluemix%3Apublic%3Acloudcerts%3Aus-south%3Aa%2F30f0a21f77994b9eb414b37300e2ced1%3A91a17928-da3c-4465-9c4b-f1a6b4dce684%3A%3A",
    certificate = { expires_at = 1623293628, domains = { "example.com", "www.example.com" } }, absent = { "error", "expiry_date" },
  },
  ["ibm-cm/v4.cert_renewed.json"] = { type = "certificate.renewal.succeeded", certificate = { auto_renewed = true } },
  ["ibm-cm/v4.cert_order_failed.json"] = {
    type = "certificate.issuance.failed", error = "Domain validation failed: _acme-challenge.example.com TXT record not found",
  },
  ["ibm-cm/v4.cert_renew_failed.json"] = {
    type = "certificate.renewal.failed", error = "Domain validation failed: _acme-challenge.example.com TXT record not found",
    certificate = { auto_renewed = true },
  },
  ["ibm-cm/v4.cert_about_to_expire_renew_required.json"] = {
    type = "certificate.expiration.upcoming", required_action = "renew", expiry_date = 1623283200,
  },
  ["ibm-cm/v4.cert_expired_renew_required.json"] = { type = "certificate.expiration.reached", required_action = "renew" },
  ["ibm-cm/v4.cert_about_to_expire_reimport_required.json"] = {
    type = "certificate.expiration.upcoming", required_action = "reimport", expiry_date = 1623283200,
  },
  ["ibm-cm/v4.cert_expired_reimport_required.json"] = { type = "certificate.expiration.reached", required_action = "reimport" },
  ["ibm-cm/v4.cert_reimported.json"] = { type = "certificate.import.succeeded" },
  ["ibm-cm/v4.cert_issued_not_downloaded.json"] = { type = "certificate.download.pending" },
  ["ibm-cm/v4.cert_renewed_not_downloaded.json"] = {
    type = "certificate.download.pending", certificate = { auto_renewed = true, previous_expires_at = 1623293628 },
  },
  ["ibm-cm/v4.test_notification_channel.json"] = { type = "notification.test" },
  ["ibm-cm/v4.cert_domain_validation_required.json"] = {
    type = "certificate.validation.required", hostname = "example.com",
    certificate = { id = CRN .. ":certificate:e1", domains = { "example.com" } },
    validation = { method = "dns-01", domain = "example.com", txt_name = "_acme-challenge.example.com",
      txt_value = "Xk2pQ9rT-challenge-value" },
  },
  ["ibm-cm/v4.cert_domain_validation_completed.json"] = {
    type = "certificate.validation.succeeded", validation = { method = "dns-01", domain = "example.com" },
  },
  ["ibm-cm/v4.real.test_notification_channel.json"] = {
    type = "notification.test", hostname = "notification.test.com",
    certificate = { expires_at = 1625313600, name = "certificate name", domains = { "notification.test.com" } },
  },
  ["ibm-cm/v4.real.cert_about_to_expire_reimport_required.json"] = {
    type = "certificate.expiration.upcoming", hostname = "*.zoenixon.com", expiry_date = 1623283200,
    certificate = { expires_at = 1623293628, name = "zoenixon.com" },
  },
  ["ibm-cm/v4.multiple-certificates.json"] = {
    type = "certificate.expiration.upcoming", hostname = "shop.example.com", expiry_date = 1623283200, ncerts = 2,
    certificate = { domains = { "shop.example.com", "www.shop.example.com", "api.shop.example.com" }, expires_at = 1623293628 },
  },
  ["ibm-cm/v4.unknown-type.json"] = { type = "unknown", provider_type = "cert_something_new" },
}

local function check_fields(actual, expected, path)
  for k, want in pairs(expected) do
    local got = actual[k]
    if type(want) == "table" then
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

describe("normalize", function()
  local files = {}
  for provider in ("cloudflare ibm-cm"):gmatch("%S+") do
    local out = fs.run("ls " .. FIX .. provider)
    for f in out:gmatch("[^\n]+") do
      if not f:match("^jwt%.") then files[#files + 1] = provider .. "/" .. f end
    end
  end

  it("has an expectation for every fixture", function()
    for _, f in ipairs(files) do assert(CASES[f], "no expectation for fixture " .. f) end
  end)

  for file, want in pairs(CASES) do
    it(file, function()
      local provider = file:match("^([^/]+)/")
      local event = normalize(file)
      assert.are.equal(provider, event.provider)
      assert.are.equal(provider, event.source) -- without --source, the provider's name
      assert_clean(event, "event")
      assert.are.equal("table", type(event.raw))
      local expected = {}
      for k, v in pairs(want) do
        if k ~= "absent" and k ~= "hashed" and k ~= "ncerts" then expected[k] = v end
      end
      check_fields(event, expected, "event")
      for _, k in ipairs(want.absent or {}) do -- a field, or a path (certificate.expires_at)
        local v = event
        for part in k:gmatch("[^.]+") do v = type(v) == "table" and v[part] or nil end
        assert.is_nil(v, "event." .. k .. " must be absent")
      end
      if want.ncerts then assert.are.equal(want.ncerts, #event.certificates) end
      if event.certificates then assert.are.equal(event.certificates[1], event.certificate) end
      assert.are.equal("number", type(event.received_at))
      if provider == "ibm-cm" or want.hashed then
        -- no id in the payload: the source and the SHA-256 of the raw body
        local hex = fs.run("sha256sum " .. FIX .. file):match("^(%x+)")
        assert.are.equal(provider .. ":sha256:" .. hex, event.id)
      else
        assert.truthy(event.id:match("^cloudflare:"))
      end
    end)
  end

  it("detects the provider when none is given", function()
    assert.are.equal("cloudflare", core.detect(fs.read(FIX .. "cloudflare/test-message.json")))
    assert.are.equal("ibm-cm", core.detect(fs.read(FIX .. "ibm-cm/v1.expiring.json")))
    assert.are.equal("ibm-cm", core.detect(fs.read(FIX .. "ibm-cm/jwt.real.test_notification_channel.json")))
    assert.is_nil(core.detect('{"hello":"world"}'))
  end)

  it("decodes the real IBM JWTs to the same event as their decoded payloads", function()
    for _, t in ipairs { "test_notification_channel", "cert_about_to_expire_reimport_required" } do
      local from_jwt = normalize("ibm-cm/jwt.real." .. t .. ".json")
      local plain = normalize("ibm-cm/v4.real." .. t .. ".json")
      assert.are.equal(plain.type, from_jwt.type)
      assert.are.same(plain.certificates, from_jwt.certificates)
      assert.are.same(plain.raw, from_jwt.raw)
      assert.are.equal(cjson.decode(fs.read(FIX .. "ibm-cm/v4.real." .. t .. ".json")).event_type,
        from_jwt.raw.event_type) -- raw is the JWT's claims
    end
  end)

  it("keeps the source name in ids without a provider id", function()
    local event = normalize("ibm-cm/v1.expiring.json", { source = "ibm-prod" })
    assert.are.equal("ibm-prod", event.source)
    assert.truthy(event.id:match("^ibm%-prod:sha256:%x+$"))
  end)

  it("turns JSON nulls into absent fields and whole numbers into integers in raw", function()
    local event = normalize("cloudflare/envelope.universal_ssl_event_type.ssl.certificate.validation.failed.json")
    assert.is_nil(event.raw.data.data.expires_on)
    assert.is_nil(event.raw.data.metadata.account)
    assert.are.equal("integer", math.type(event.raw.ts))
    local ibm = normalize("ibm-cm/v4.cert_issued.json")
    assert.are.equal("integer", math.type(ibm.payload_version))
    assert.are.equal("integer", math.type(ibm.raw.version))
  end)

  it("treats ISO and epoch-millisecond timestamps alike", function()
    local iso = core.normalize('{"event_type":"cert_issued","certificates":[{"cert_crn":"c","domains":"a.com","expires_on":"2021-06-10T02:53:48Z"}],"version":4}', { provider = "ibm-cm" })
    local ms = core.normalize('{"event_type":"cert_issued","certificates":[{"cert_crn":"c","domains":"a.com","expires_on":1623293628000}],"version":4}', { provider = "ibm-cm" })
    assert.are.equal(1623293628, iso.certificate.expires_at)
    assert.are.equal(1623293628, ms.certificate.expires_at)
    assert.are.equal("integer", math.type(ms.certificate.expires_at))
  end)

  it("splits comma-separated domains and drops empty entries", function()
    local e = core.normalize('{"event_type":"cert_issued","certificates":[{"cert_crn":"c","domains":" a.com,b.com , ,c.com,"}],"version":4}', { provider = "ibm-cm" })
    assert.are.same({ "a.com", "b.com", "c.com" }, e.certificate.domains)
    assert.are.equal("a.com", e.hostname)
  end)

  it("ignores values of the wrong type instead of copying them", function()
    local e = core.normalize('{"metadata":{"event":{"id":"x","type":"ssl.custom_hostname_certificate.deployment.succeeded","created_at":42}},"data":{"hostname":7,"id":"","ssl":{"id":"c","hosts":["a.com",3,"",null],"status":""}}}', { provider = "cloudflare" })
    assert.is_nil(e.hostname)
    assert.is_nil(e.hostname_id)
    assert.are.same({ "a.com" }, e.certificate.domains)
    assert.is_nil(e.certificate.status)
    assert.are.equal(42, e.occurred_at)
  end)

  describe("refuses with a message a person can act on", function()
    local function refused(body, provider, pattern)
      local event, msg, status = core.normalize(body, { provider = provider })
      assert.is_nil(event)
      assert.are.equal(400, status)
      assert.truthy(msg:match(pattern), msg)
    end
    it("invalid JSON, saying where", function()
      refused('{"metadata": {', "cloudflare", "^invalid JSON: .*character %d+")
    end)
    it("a JSON value that is not an object", function()
      refused("[1,2]", "cloudflare", "expected a JSON object")
      refused('"text"', "ibm-cm", "expected a JSON object")
    end)
    it("a Cloudflare body of no known shape", function()
      refused('{"hello":"world"}', "cloudflare", "not a recognizable Cloudflare payload")
    end)
    it("an SSL event without its type", function()
      refused('{"metadata":{"event":{"id":"x"}},"data":{}}', "cloudflare", "metadata.event.type is missing")
    end)
    it("an IBM payload without event_type or expiring_certificates", function()
      refused('{"instance_crn":"crn:x","version":4}', "ibm-cm", "expected \"event_type\"")
    end)
  end)
end)
