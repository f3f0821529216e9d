-- The providers of AWS ACM, Azure Key Vault, IBM Secrets Manager and DigiCert (DESIGN §3-5,
-- PROVIDERS.md §2.7, §3): every fixture in tests/fixtures/<provider>/ normalizes to the
-- canonical type of DESIGN §4 with the hostname, certificate id and expiry the payload has;
-- every provider's detect recognizes its own fixtures and no other's; every sample normalizes
-- to its type; handshakes answer without events; the configuration refuses what it must.
local certhook = require "certhook"
local cjson = require "cjson"
local core = require "helpers.core"
local fs = require "helpers.fs"

local FIX = "tests/fixtures/"
local iso = function(s) return assert(certhook.time.parse(s)) end

local ARN = "arn:aws:acm:us-east-1:123456789012:certificate/61f50cd4-45b9-4259-b049-d0a53682fa4b"
local SM_CRN = "crn:v1:bluemix:public:secrets-manager:us-south:a/a6cc9f5f21f34323a4175c1117638b40:f1d9a3c8-5b2e-4e7a-9c61-3d8b2a7e4f10"
local SHOP_SECRET = SM_CRN .. ":secret:0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
local KV = "https://flazkv-shared-neu-001.vault.azure.net/certificates/"

local ACM_CERT = { id = ARN, arn = ARN, name = "example.com", domains = { "example.com" } }

-- fixture -> the events (one table per event, in order): fields each must have; absent = fields
-- it must not have. A fixture that is a handshake: { handshake = status }.
local CASES = {
  ["aws-acm/certificate-available.ISSUANCE.json"] = { {
    type = "certificate.issuance.succeeded", provider_type = "ACM Certificate Available",
    id = "aws-acm:9c95e8e4-96a4-ef3f-b739-b6aa5b193a03", hostname = "example.com",
    account = "123456789012", region = "us-east-1", occurred_at = iso("2019-12-22T18:43:48Z"),
    days_to_expiry = 198,
    certificate = { id = ARN, arn = ARN, type = "AMAZON_ISSUED", method = "DNS", status = "ISSUED",
      expires_at = iso("2019-12-22T18:43:48Z"), domains = { "example.com" } },
  } },
  ["aws-acm/certificate-available.RENEWAL.json"] = { { type = "certificate.renewal.succeeded", certificate = ACM_CERT } },
  ["aws-acm/certificate-available.IMPORT.json"] = { {
    type = "certificate.import.succeeded", certificate = { id = ARN, type = "IMPORTED" }, absent = { "error" },
  } },
  ["aws-acm/certificate-available.REIMPORT.json"] = { { type = "certificate.import.succeeded", certificate = ACM_CERT } },
  ["aws-acm/certificate-approaching-expiration.json"] = { {
    type = "certificate.expiration.upcoming", provider_type = "ACM Certificate Approaching Expiration",
    days_to_expiry = 31, hostname = "example.com", occurred_at = iso("2020-09-30T06:51:08Z"),
    certificate = { id = ARN, name = "example.com", -- no date in the event: when it occurred + the days
      expires_at = iso("2020-09-30T06:51:08Z") + 31 * 86400, expires_at_approximate = true },
  } },
  ["aws-acm/certificate-approaching-expiration.minimal.json"] = { {
    type = "certificate.expiration.upcoming", days_to_expiry = 31,
    certificate = { id = ARN, name = "My Awesome Service" }, absent = { "hostname" },
  } },
  ["aws-acm/certificate-expired.json"] = { {
    type = "certificate.expiration.reached", hostname = "example.com",
    certificate = { id = ARN, status = "EXPIRED", expires_at = iso("2019-12-22T18:43:48Z") },
  } },
  ["aws-acm/certificate-renewal-action-required.json"] = { {
    type = "certificate.renewal.failed", error = "CAA_ERROR", required_action = "renew", days_to_expiry = 30,
    certificate = ACM_CERT,
  } },
  ["aws-acm/certificate-revoked.json"] = { {
    type = "certificate.revocation.succeeded", certificate = { id = ARN, status = "REVOKED" },
  } },
  ["aws-acm/health.AWS_ACM_RENEWAL_FAILURE.json"] = { {
    type = "certificate.renewal.failed", provider_type = "AWS_ACM_RENEWAL_FAILURE",
    id = "aws-acm:7bf73129-1428-4cd3-a780-95db273d1602", certificate = { id = ARN, arn = ARN },
    error = "ACM was unable to renew the certificate for example.com. Request a new certificate to replace it before it expires.",
  } },
  ["aws-acm/health.CAA_CHECK_FAILURE.json"] = { {
    type = "certificate.renewal.failed", provider_type = "CAA_CHECK_FAILURE", certificate = { id = ARN },
  } },
  ["aws-acm/health.AWS_ACM_RENEWAL_STATE_CHANGE.json"] = { {
    type = "unknown", provider_type = "AWS_ACM_RENEWAL_STATE_CHANGE", certificate = { id = ARN }, absent = { "error" },
  } },
  ["aws-acm/sns.Notification.certificate-approaching-expiration.json"] = { {
    -- the inner event: its id and raw, as if it had come from an API destination
    type = "certificate.expiration.upcoming", id = "aws-acm:9c95e8e4-96a4-ef3f-b739-b6aa5b193a01",
    days_to_expiry = 31, hostname = "example.com", raw = { source = "aws.acm" },
  } },
  ["aws-acm/sns.Notification.docs-example.json"] = { {
    type = "unknown", provider_type = "My First Message", occurred_at = iso("2012-05-02T00:54:06.655Z"),
    raw = { Message = "Hello world!" }, hashed = true,
  } },
  ["aws-acm/sns.SubscriptionConfirmation.json"] = { handshake = 200 },
  ["aws-acm/sns.UnsubscribeConfirmation.json"] = { handshake = 200 },

  ["azure-keyvault/eventgrid.Microsoft.KeyVault.CertificateNewVersionCreated.json"] = { {
    -- the documented quirks: "ObjectName " with a space, " Version", string NBF and EXP
    type = "certificate.issuance.succeeded", provider_type = "Microsoft.KeyVault.CertificateNewVersionCreated",
    id = "azure-keyvault:00eccf70-95a7-4e7c-8299-2eb17ee9ad65", instance = "sample-kv",
    occurred_at = iso("2019-07-25T01:08:33.1036736Z"),
    certificate = { id = "https://sample-kv.vault.azure.net/certificates/newcert", name = "newcert",
      uri = "https://sample-kv.vault.azure.net/certificates/newcert/ee059b2bb5bc48398a53b168c6cdcb10",
      version = "ee059b2bb5bc48398a53b168c6cdcb10", not_before = 1559081980, expires_at = 1590704380 },
    absent = { "hostname", "account" },
  } },
  ["azure-keyvault/eventgrid.Microsoft.KeyVault.CertificateNearExpiry.json"] = { {
    type = "certificate.expiration.upcoming", instance = "flazkv-shared-neu-001",
    account = "4a570962-701a-475e-bf5b-8dc76ec748ff",
    certificate = { id = KV .. "mycert13", name = "mycert13", expires_at = 1745702248, not_before = 1745695048 },
  } },
  ["azure-keyvault/eventgrid.Microsoft.KeyVault.CertificateExpired.json"] = { {
    type = "certificate.expiration.reached", id = "azure-keyvault:5b1c2e7d-8f3a-4c6b-9d0e-1f2a3b4c5d6e",
    certificate = { id = KV .. "mycert13", expires_at = 1745702248 },
  } },
  ["azure-keyvault/eventgrid.batch.json"] = {
    { type = "certificate.expiration.upcoming", certificate = { id = KV .. "mycert13" } },
    { type = "unknown", provider_type = "Microsoft.KeyVault.KeyNearExpiry", absent = { "certificate" },
      id = "azure-keyvault:8d2e4f6a-1b3c-4d5e-8f9a-0b1c2d3e4f5a" },
    { type = "unknown", provider_type = "Microsoft.KeyVault.SecretNewVersionCreated", instance = "sample-kv",
      raw = { data = { ["ObjectName "] = "newsecret" } } },
  },
  ["azure-keyvault/eventgrid.Microsoft.EventGrid.SubscriptionValidationEvent.json"] = { handshake = 200 },
  ["azure-keyvault/cloudevents.Microsoft.KeyVault.CertificateNewVersionCreated.json"] = { {
    type = "certificate.issuance.succeeded", occurred_at = iso("2025-06-11T19:59:02.4410265Z"),
    certificate = { id = KV .. "mycert10", name = "mycert10", expires_at = 1749679127 },
  } },
  ["azure-keyvault/cloudevents.Microsoft.KeyVault.CertificateNearExpiry.json"] = { {
    type = "certificate.expiration.upcoming", id = "azure-keyvault:f36c5d73-a559-480d-b131-202c16c1c024",
    certificate = { id = KV .. "mycert10" },
  } },
  ["azure-keyvault/cloudevents.Microsoft.KeyVault.CertificateExpired.json"] = { {
    type = "certificate.expiration.reached", certificate = { id = KV .. "mycert10" },
  } },
  ["azure-keyvault/cloudevents.batch.json"] = {
    { type = "certificate.issuance.succeeded" }, { type = "certificate.expiration.upcoming" },
    { type = "certificate.expiration.reached" },
  },

  ["ibm-sm/secret_created.json"] = { {
    type = "certificate.issuance.succeeded", provider_type = "secret_created", hostname = "shop.example.com",
    instance = SM_CRN .. "::", region = "us-south", account = "a6cc9f5f21f34323a4175c1117638b40",
    occurred_at = iso("2025-01-01T00:02:11Z"), hashed = true,
    dashboard_url = "https://cloud.ibm.com/services/secrets-manager/crn%3Av1%3Abluemix%3Apublic%3Asecrets-manager%3Aus-south%3Aa%2Fa6cc9f5f21f34323a4175c1117638b40%3Af1d9a3c8-5b2e-4e7a-9c61-3d8b2a7e4f10%3A%3A",
    certificate = { id = SHOP_SECRET, crn = SHOP_SECRET, name = "shop-example-com", type = "public_cert",
      domains = { "shop.example.com", "www.shop.example.com" }, expires_at = iso("2025-04-01T00:00:00Z"),
      serial_number = "4e:11:0d:7a:93:5c:2b:8f:61:0a:aa:3c:d9:17:5e:42" },
  } },
  ["ibm-sm/secret_creation_failed.json"] = { {
    type = "certificate.issuance.failed", hostname = "shop.example.com",
    error = "DNS challenge failed: no TXT record _acme-challenge.shop.example.com",
  } },
  ["ibm-sm/secret_rotated.json"] = { { type = "certificate.renewal.succeeded", certificate = { expires_at = iso("2025-05-31T00:00:00Z") } } },
  ["ibm-sm/secret_rotation_failed.json"] = { {
    type = "certificate.renewal.failed", error = "Let's Encrypt: too many certificates already issued for exact set of domains",
  } },
  ["ibm-sm/secret_about_to_expire.in_30_days.json"] = { {
    type = "certificate.expiration.upcoming", days_to_expiry = 30, hostname = "legacy.example.com",
    certificate = { name = "legacy-imported", type = "imported_cert", expires_at = iso("2025-04-01T00:00:00Z") },
  } },
  ["ibm-sm/secret_about_to_expire.in_10_days.multiple.json"] = { {
    type = "certificate.expiration.upcoming", days_to_expiry = 10, hostname = "domain1.com", ncerts = 2,
    certificates = { { name = "my-certificate-1", domains = { "domain1.com" } },
      { name = "my-certificate-2", domains = { "domain2.com", "domain3.com" } } },
  } },
  ["ibm-sm/secret_expired.json"] = { { type = "certificate.expiration.reached", hostname = "legacy.example.com" } },
  ["ibm-sm/secret_revoked.json"] = { {
    type = "certificate.revocation.succeeded", hostname = "api.internal.example",
    certificate = { type = "private_cert", serial_number = "3f:88:1c:02" },
  } },
  ["ibm-sm/secret_deleted.json"] = { { type = "certificate.deletion.succeeded" } },
  ["ibm-sm/secret_deletion_failed.json"] = { { type = "certificate.deletion.failed", error = "internal error" } },
  ["ibm-sm/test_event.json"] = { { type = "notification.test", absent = { "certificate", "hostname" } } },
  ["ibm-sm/cloudevents.secret_about_to_expire.in_30_days.json"] = { {
    type = "certificate.expiration.upcoming", id = "ibm-sm:8e7d6c5b-4a39-4281-9f0e-d1c2b3a4f5e6",
    days_to_expiry = 30, occurred_at = iso("2025-03-02T00:01:07.021Z"), hostname = "legacy.example.com",
    raw = { specversion = "1.0" }, absent = { "certificate.expires_at_approximate" }, -- it has a date
  } },
  ["ibm-sm/cloudevents.secret_rotated.json"] = { { type = "certificate.renewal.succeeded", hostname = "shop.example.com" } },
  ["ibm-sm/cloudevents.secret_rotation_failed.json"] = { {
    type = "certificate.renewal.failed", id = "ibm-sm:9f8e7d6c-5b4a-4392-8a1f-e2d3c4b5a6f7",
    error = "Let's Encrypt: too many certificates already issued for exact set of domains",
  } },

  ["digicert/certificate_issued.json"] = { {
    -- the leaf of data.certificate_chain, read with OpenSSL
    type = "certificate.issuance.succeeded", provider_type = "certificate_issued", hostname = "shop.example.com",
    certificate = { id = "1234", order_id = "1234", name = "shop.example.com",
      domains = { "shop.example.com", "www.shop.example.com" }, serial_number = "1002",
      issuer = "CN=certhook Test Intermediate CA,O=certhook tests",
      not_before = iso("2025-01-01T00:00:00Z"), expires_at = iso("2025-03-31T23:59:59Z") },
    hashed = true,
  } },
  ["digicert/certificate_issued.minimal.json"] = { {
    type = "certificate.issuance.succeeded", certificate = { id = "23456", order_id = "12345" }, absent = { "hostname" },
    hashed = true,
  } },
  ["digicert/certificate_revoked.json"] = { { type = "certificate.revocation.succeeded", hashed = true } },
  ["digicert/order_rejected.json"] = { {
    type = "certificate.issuance.failed", certificate = { id = "471270113", order_id = "470091052" }, hashed = true,
  } },
  ["digicert/domain_validated.json"] = { {
    type = "certificate.validation.succeeded", hostname = "shop.example.com", validation = { domain = "shop.example.com" },
  } },
  ["digicert/domain_expired.json"] = { { type = "certificate.validation.expired", hostname = "shop.example.com" } },
  ["digicert/domain_revalidation_notice.json"] = { { type = "certificate.validation.required", hostname = "shop.example.com" } },
  ["digicert/organization_validated.json"] = { { type = "certificate.validation.succeeded", absent = { "hostname" } } },
  ["digicert/organization_expired.json"] = { { type = "certificate.validation.expired" } },
  ["digicert/organization_revalidation_notice.json"] = { {
    type = "certificate.validation.required", validation = { method = "ov" },
  } },
}

local PROVIDERS = { "aws-acm", "azure-keyvault", "ibm-sm", "digicert" }

local function fixtures(provider)
  local out = {}
  for f in fs.run("ls " .. FIX .. provider):gmatch("[^\n]+") do
    if f:match("%.json$") then out[#out + 1] = provider .. "/" .. f end
  end
  return out
end

-- No JSON null and no empty string in the event outside raw.
local function assert_clean(t, path, in_raw)
  for k, v in pairs(t) do
    local p = path .. "." .. tostring(k)
    assert(v ~= cjson.null or in_raw, "JSON null at " .. p)
    if not in_raw then assert(v ~= "", "empty string at " .. p) end
    if type(v) == "table" then assert_clean(v, p, in_raw or k == "raw") end
  end
end

local function check_fields(actual, expected, path)
  for k, want in pairs(expected) do
    local got = actual[k]
    if type(want) == "table" then
      assert(type(got) == "table", ("%s.%s: expected a table, got %s"):format(path, k, tostring(got)))
      check_fields(got, want, path .. "." .. k)
      if #want > 0 then assert.are.equal(#want, #got, path .. "." .. k .. " length") end
    elseif type(want) == "number" then
      assert(type(got) == "number" and math.abs(got - want) < 1e-3,
        ("%s.%s: expected %s, got %s"):format(path, k, want, tostring(got)))
    else
      assert.are.equal(want, got, path .. "." .. k)
    end
  end
end

describe("providers of AWS ACM, Azure Key Vault, IBM Secrets Manager, DigiCert", function()
  it("have an expectation for every fixture", function()
    for _, p in ipairs(PROVIDERS) do
      for _, f in ipairs(fixtures(p)) do assert(CASES[f], "no expectation for fixture " .. f) end
    end
  end)

  for file, wants in pairs(CASES) do
    it(file, function()
      local provider = file:match("^([^/]+)/")
      local body = assert(fs.read(FIX .. file))
      local events, msg, status = core.cli.normalize(body, { provider = provider })
      if wants.handshake then
        assert.is_nil(events)
        assert.are.equal(wants.handshake, status)
        assert.truthy(msg:find("handshake", 1, true), msg)
        return
      end
      assert(events, msg)
      assert.are.equal(#wants, #events, "number of events")
      for i, want in ipairs(wants) do
        local e = events[i]
        assert_clean(e, "event")
        assert.are.equal(provider, e.provider)
        assert.are.equal("table", type(e.raw))
        if e.certificates then assert.are.equal(e.certificates[1], e.certificate) end
        local expected = {}
        for k, v in pairs(want) do
          if k ~= "absent" and k ~= "hashed" and k ~= "ncerts" then expected[k] = v end
        end
        check_fields(e, expected, "event")
        for _, k in ipairs(want.absent or {}) do -- a field, or a path (certificate.expires_at)
          local v = e
          for part in k:gmatch("[^.]+") do v = type(v) == "table" and v[part] or nil end
          assert.is_nil(v, "event." .. k .. " must be absent")
        end
        if want.ncerts then assert.are.equal(want.ncerts, #e.certificates) end
        if want.hashed or provider == "digicert" or (provider == "ibm-sm" and not e.raw.specversion) then
          local hex = fs.run("sha256sum " .. FIX .. file):match("^(%x+)")
          assert.are.equal(provider .. ":sha256:" .. hex, e.id)
        else
          assert.truthy(e.id:find("^" .. provider:gsub("%-", "%%-") .. ":"), e.id)
          assert.is_nil(e.id:find(":sha256:", 1, true), e.id)
        end
      end
    end)
  end

  it("each recognize their own fixtures, and no other provider's", function()
    for _, p in ipairs { "cloudflare", "ibm-cm", "aws-acm", "azure-keyvault", "ibm-sm", "digicert" } do
      for _, f in ipairs(fixtures(p)) do
        if not f:match("^ibm%-cm/jwt%.") or p == "ibm-cm" then
          assert.are.equal(p, core.detect(fs.read(FIX .. f)), f)
        end
      end
    end
    for _, f in ipairs(fixtures("alertmanager")) do
      assert.is_nil(core.detect(fs.read(FIX .. f)), f) -- a Lua provider's: no built-in one's
    end
  end)

  it("have a sample of each type they list, a new event each time", function()
    local seen = 0
    for _, p in ipairs { "cloudflare", "ibm-cm", table.unpack(PROVIDERS) } do
      local types = core.cli.sample(p)
      assert(#types >= 3, p)
      for _, t in ipairs(types) do
        local a, b = core.cli.sample(p, t), core.cli.sample(p, t)
        assert.are_not.equal(a, b)
        local events = assert(core.cli.normalize(a, { provider = p }))
        assert.are.equal(t, events[1].type, p .. " " .. t)
        assert.are.equal(p, core.detect(a))
        seen = seen + 1
      end
      local none, msg = core.cli.sample(p, "certificate.nothing.ever")
      assert.is_nil(none)
      assert.truthy(msg:find("no sample", 1, true))
    end
    assert(seen >= 45)
  end)

  -- The samples' certificate expires at the start of the UTC day 31 days from now (30 whole
  -- days left), or, in a sample of an expiry reached, now.
  local function sample_expiry() return (os.time() // 86400 + 31) * 86400 end

  it("say one expiry of their certificate, in days and in dates alike", function()
    for _, p in ipairs { "cloudflare", "ibm-cm", table.unpack(PROVIDERS) } do
      for _, t in ipairs(core.cli.sample(p)) do
        local e = assert(core.normalize(assert(core.cli.sample(p, t)), { provider = p }))
        local what, x = p .. " " .. t, sample_expiry()
        if t == "certificate.expiration.reached" then x = os.time() end
        for _, c in ipairs(e.certificates or {}) do
          if c.expires_at then
            local slack = c.expires_at_approximate and 86400 or 2 -- known to a day
            assert(math.abs(c.expires_at - x) <= slack, ("%s: expires %s, not %s"):format(what,
              os.date("!%FT%TZ", c.expires_at), os.date("!%FT%TZ", x)))
          end
        end
        if e.days_to_expiry then assert.are.equal(30, e.days_to_expiry, what) end
      end
    end
  end)

  it("give every certificate its canonical state: from the provider's status word, else the type", function()
    local function state(p, t, edit)
      local body = assert(core.cli.sample(p, t))
      if edit then
        local v = cjson.decode(body)
        edit(v)
        body = cjson.encode(v)
      end
      local e = assert(core.normalize(body, { provider = p }))
      return e.certificate and e.certificate.state, e.certificate and e.certificate.status
    end
    assert.are.same({ "active", "ISSUED" }, { state("aws-acm", "certificate.issuance.succeeded") })
    assert.are.same({ "revoked", "REVOKED" }, { state("aws-acm", "certificate.revocation.succeeded") })
    assert.are.equal("active", state("azure-keyvault", "certificate.issuance.succeeded")) -- no status: the type
    assert.are.equal("expired", state("ibm-sm", "certificate.expiration.reached"))
    assert.are.equal("deleted", state("ibm-sm", "certificate.deletion.succeeded"))
    assert.are.equal("failed", state("digicert", "certificate.issuance.failed"))
    assert.are.equal("pending_deployment", state("cloudflare", "certificate.issuance.succeeded")) -- its status
    assert.are.equal("pending_issuance", state("cloudflare", "certificate.renewal.failed"))
    assert.is_nil(state("ibm-sm", "certificate.renewal.failed")) -- says nothing of it: the entry keeps its state
    local function cf_status(word)
      return function(v) v.data.ssl.status = word end
    end
    assert.are.equal("failed", state("cloudflare", "certificate.validation.failed", cf_status("validation_timed_out")))
    assert.are.equal("pending_validation", state("cloudflare", "certificate.validation.failed", cf_status("initializing")))
    assert.are.equal("active", state("cloudflare", "certificate.deployment.succeeded", cf_status("ACTIVE")))
  end)

  -- Cloudflare's and IBM Certificate Manager's samples are built from the parse tables read
  -- backwards: what each says comes back out of normalize.
  it("give Cloudflare and IBM Certificate Manager samples the facts their events carry", function()
    local want = {
      cloudflare = {
        ["certificate.validation.failed"] = { hostname = "shop.example.com", error = "caa_error: shop.example.com",
          provider_type = "ssl.custom_hostname_certificate.validation.failed", account = "9035f53656c247e895c5a6939ae8a0e0",
          hostname_id = "0d89c70d-ad9f-4843-b99f-6cc0252067e9", origin_server = "origin.shop.example.com",
          metadata = { customer = "shop" }, status = { from = "pending_validation", to = "pending_validation" },
          validation = { method = "txt", txt_name = "_acme-challenge.shop.example.com", domain = "shop.example.com" },
          certificate = { id = "7e7b8deba8538af625850b7b2530034c", type = "dv", status = "pending_validation",
            settings = { http2 = "on" } }, absent = { "certificate.expires_at" } },
        ["certificate.deployment.succeeded"] = { status = { from = "pending_deployment", to = "active" },
          certificate = { domains = { "shop.example.com" }, issuer = "GoogleTrustServices", signature = "ECDSAWithSHA256",
            expires_at = sample_expiry(), custom_csr_id = "7b163417-1d2b-4c84-a38a-2fb7a0cd7752" } },
        ["certificate.expiration.upcoming"] = { provider_type = "hostname_aop_custom_certificate_expiration_type",
          hostname = "shop.example.com", zone = "023e105f4ecef8ad9ca31a8372d0c353",
          certificate = { id = "4ec9c1a4-9d32-4bb5-a1c4-0c1e0e2a7b91", status = "active", domains = { "shop.example.com" } } },
        ["notification.test"] = { absent = { "certificate", "hostname" } },
      },
      ["ibm-cm"] = {
        ["certificate.validation.required"] = { payload_version = 4, hostname = "shop.example.com",
          provider_type = "cert_domain_validation_required",
          validation = { method = "dns-01", domain = "shop.example.com", txt_name = "_acme-challenge.shop.example.com" },
          certificate = { domains = { "shop.example.com" } } },
        ["certificate.renewal.failed"] = { hostname = "shop.example.com",
          error = "Domain validation failed: _acme-challenge.shop.example.com TXT record not found",
          certificate = { name = "shop.example.com", domains = { "shop.example.com", "www.shop.example.com" },
            expires_at = sample_expiry(), auto_renewed = true } },
        ["certificate.expiration.upcoming"] = { required_action = "renew", expiry_date = sample_expiry(),
          instance = "crn:v1:bluemix:public:cloudcerts:us-south:a/30f0a21f77994b9eb414b37300e2ced1:91a17928-da3c-4465-9c4b-f1a6b4dce684::",
          absent = { "error", "certificate.auto_renewed" } },
        ["certificate.download.pending"] = { provider_type = "cert_issued_not_downloaded",
          absent = { "certificate.previous_expires_at" } },
      },
    }
    for p, types in pairs(want) do
      for t, fields in pairs(types) do
        local e = assert(core.normalize(assert(core.cli.sample(p, t)), { provider = p }))
        assert.are.equal(t, e.type)
        assert_clean(e, p .. " " .. t)
        local absent = fields.absent or {}
        fields.absent = nil
        check_fields(e, fields, p .. " " .. t)
        for _, path in ipairs(absent) do
          local v = e
          for k in path:gmatch("[^.]+") do v = type(v) == "table" and v[k] or nil end
          assert.is_nil(v, p .. " " .. t .. ": " .. path)
        end
      end
    end
    local crn = assert(core.normalize(core.cli.sample("ibm-cm", "certificate.issuance.succeeded"))).certificate.id
    assert.truthy(crn:find("^crn:v1:bluemix:public:cloudcerts:us%-south:a/30f0a21f77994b9eb414b37300e2ced1:" ..
      "91a17928%-da3c%-4465%-9c4b%-f1a6b4dce684:certificate:%x+%-"), crn)
  end)

  it("answer the Event Grid validation handshake with its code", function()
    local body = fs.read(FIX .. "azure-keyvault/eventgrid.Microsoft.EventGrid.SubscriptionValidationEvent.json")
    local _, msg = core.cli.normalize(body, { provider = "azure-keyvault" })
    assert.truthy(msg:find('{"validationResponse":"512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}', 1, true), msg)
  end)

  it("read an EventBridge batch (an array of events) as one event each", function()
    local a = cjson.decode(fs.read(FIX .. "aws-acm/certificate-expired.json"))
    local b = cjson.decode(fs.read(FIX .. "aws-acm/certificate-revoked.json"))
    local events = assert(core.cli.normalize(cjson.encode { a, b }, { provider = "aws-acm" }))
    assert.are.equal(2, #events)
    assert.are.equal("certificate.expiration.reached", events[1].type)
    assert.are.equal("certificate.revocation.succeeded", events[2].type)
    assert.are.equal("aws-acm:" .. b.id, events[2].id)
  end)

  it("keep an EventBridge event of another service as unknown, without a certificate", function()
    local e = assert(core.normalize('{"id":"x1","source":"aws.ec2","detail-type":"EC2 Instance State-change Notification","detail":{}}',
      { provider = "aws-acm" }))
    assert.are.equal("unknown", e.type)
    assert.are.equal("EC2 Instance State-change Notification", e.provider_type)
    assert.is_nil(e.certificate)
  end)

  describe("refuse with a message", function()
    local function refused(body, provider, pattern)
      local events, msg, status = core.cli.normalize(body, { provider = provider })
      assert.is_nil(events)
      assert.are.equal(400, status)
      assert.truthy(msg:match(pattern), msg)
    end
    it("what no provider would send", function()
      refused('{"hello":"world"}', "aws-acm", "expected \"source\"")
      refused('{"hello":"world"}', "azure-keyvault", "expected a JSON array")
      refused('[]', "azure-keyvault", "expected a JSON array")
      refused('[{"id":"1"}]', "azure-keyvault", "has no \"eventType\"")
      refused('[3]', "azure-keyvault", "not a JSON object")
      refused('{"hello":"world"}', "ibm-sm", "expected \"event_type\"")
      refused('{"data":{}}', "digicert", "expected a JSON object {\"event\"")
    end)
  end)
end)

describe("source settings of the new providers", function()
  local dir = fs.tmpdir()
  teardown(function() fs.rm(dir) end)

  -- What `certhook serve` says of a config with these sources (it stops before listening).
  local function serve_error(sources)
    fs.write(dir .. "/certhook.conf.lua", 'listen = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\ndata = "data"\n' ..
      "sources = " .. sources .. "\n")
    local _, err, code = fs.run(("cd '%s' && %s serve --config certhook.conf.lua"):format(dir,
      os.getenv("CERTHOOK") or "build/certhook-dev"))
    assert.are.equal(1, code)
    return err
  end

  it("refuse a source without credentials, naming what each provider takes", function()
    assert.truthy(serve_error('{ a = { provider = "aws-acm" } }'):find("sources.a has no credentials: set secret (the API key", 1, true))
    assert.truthy(serve_error('{ a = { provider = "azure-keyvault" } }'):find("key query", 1, true))
    assert.truthy(serve_error('{ a = { provider = "ibm-sm" } }'):find("Event Notifications", 1, true))
    assert.truthy(serve_error('{ a = { provider = "digicert" } }'):find("X-WEBHOOK-KEY", 1, true))
  end)

  it("refuse unknown keys, in sns too, and half of Basic", function()
    assert.truthy(serve_error('{ a = { provider = "aws-acm", secret = "s3cret-value", topic_arns = {} } }')
      :find("sources.a.topic_arns is not a setting", 1, true))
    assert.truthy(serve_error('{ a = { provider = "aws-acm", sns = { topic_arn = "x" } } }')
      :find("sources.a.sns.topic_arn is not a setting (those of sources.a.sns are signing_cert, topic_arns, confirm)", 1, true))
    assert.truthy(serve_error('{ a = { provider = "aws-acm", sns = { confirm = "yes" } } }')
      :find("sources.a.sns.confirm must be true or false", 1, true))
    assert.truthy(serve_error('{ a = { provider = "aws-acm", username = "u" } }')
      :find("username is set without password", 1, true))
    assert.truthy(serve_error('{ a = { provider = "aws-acm", sns = { signing_cert = "nope.pem" } } }')
      :find("sources.a.sns.signing_cert: cannot read", 1, true))
    assert.truthy(serve_error('{ a = { provider = "digicert", secret = "s3cret-value", username = "u" } }')
      :find("sources.a.username is not a setting", 1, true))
  end)

end)
