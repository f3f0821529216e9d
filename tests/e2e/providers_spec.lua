-- The providers of AWS ACM, Azure Key Vault, IBM Secrets Manager and DigiCert against a running
-- server, with their real authentication: AWS ACM (an EventBridge API destination's key or
-- Basic credentials; SNS messages signed with a key and certificate made here, SignatureVersion
-- 1 and 2, the subscription handshakes), Azure Key Vault (the key query parameter or header,
-- the Event Grid and CloudEvents handshakes, batches), IBM Secrets Manager, DigiCert. Posts go
-- through `certhook send` where it can make them, as a user's would.
local cjson = require "cjson"
local fs = require "helpers.fs"
local http = require "helpers.http"
local Server = require "helpers.server"
local sns = require "helpers.sns"

local FIX = os.getenv("PWD") .. "/tests/fixtures/" -- absolute: certhook send runs in the server's directory
local TOPIC = "arn:aws:sns:us-east-1:123456789012:acm-events"
local ACM_KEY, KV_KEY, SM_TOKEN = "acm-api-key-1234", "kv-key-0123456789", "sm-token-0123456789"
local DC_KEY = "dc-webhook-key-0123456789abcdef0123"

local CONFIG = ([[
sources = {
  acm = { provider = "aws-acm", secret = %q, sns = { signing_cert = "sns.pem", topic_arns = { %q } } },
  acmbasic = { provider = "aws-acm", username = "eventbridge", password = "basic-password-1" },
  acmconfirm = { provider = "aws-acm", sns = { signing_cert = "sns.pem", confirm = true } },
  kv = { provider = "azure-keyvault", secret = %q },
  sm = { provider = "ibm-sm", secret = %q },
  dc = { provider = "digicert", secret = %q },
}
delivery = { backoff = 30, max_backoff = 30 }
watchdog = false -- the fixtures' certificates expired long ago: its events would change the counts
]]):format(ACM_KEY, TOPIC, KV_KEY, SM_TOKEN, DC_KEY)

-- What each handler call got, by event id.
local DUMP = [[
local certhook = require "certhook"
return { ["*"] = function(e)
  local f = assert(io.open("got-" .. e.id:gsub("[^%w]", "_") .. ".json", "w"))
  f:write(certhook.json.encode(e))
  f:close()
end }]]

describe("the providers of AWS ACM, Azure, IBM Secrets Manager and DigiCert", function()
  local srv, dir

  -- `certhook send ARGS` with this server's sources (client.conf.lua: its listen address is
  -- the server's port): stdout and stderr, exit status.
  local function send(args)
    local out, err, code = fs.run(("cd '%s' && %s send --config client.conf.lua %s"):format(dir, Server.certhook, args))
    return out .. err, code
  end

  local function got(id, seconds)
    return fs.wait_for(function()
      local text = fs.read(dir .. "/got-" .. id:gsub("[^%w]", "_") .. ".json")
      local ok, e = pcall(cjson.decode, text or "") -- the handler may be writing it still
      return ok and e
    end, seconds or 10)
  end

  local function events_count()
    return tonumber(srv:sql("SELECT count(*) FROM events")[1][1])
  end

  local function sns_message(fields, version)
    return sns.message(fields, dir .. "/sns.key", version)
  end

  local function post_sns(source, m)
    return srv:request("POST", "/hooks/" .. source, sns.request(m))
  end

  setup(function()
    dir = fs.tmpdir()
    -- the "SNS" key and certificate (the sources' sns.signing_cert), and a key of no one's
    sns.keypair(dir)
    local _, err, code = fs.run(("cd '%s' && openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 " ..
      "-out other.key 2>&1"):format(dir))
    assert(code == 0, err)
    srv = Server.start { dir = dir, config = CONFIG, handlers = { ["dump.lua"] = DUMP } }
    fs.write(dir .. "/client.conf.lua", ('listen = "127.0.0.1:%d"\n'):format(srv.port) .. CONFIG)
  end)
  teardown(function() if srv then srv:cleanup() end end)

  describe("aws-acm", function()
    it("takes an EventBridge API destination's event with its API key or Basic credentials", function()
      local out, code = send("--source acm " .. FIX .. "aws-acm/certificate-available.ISSUANCE.json")
      assert.are.equal(0, code, out)
      assert.truthy(out:find('^202 {"id":"aws%-acm:9c95e8e4%-96a4%-ef3f%-b739%-b6aa5b193a03"'), out)
      local e = assert(got("aws-acm:9c95e8e4-96a4-ef3f-b739-b6aa5b193a03"))
      assert.are.equal("certificate.issuance.succeeded", e.type)
      assert.are.equal("example.com", e.hostname)
      out, code = send("--source acmbasic " .. FIX .. "aws-acm/certificate-revoked.json")
      assert.are.equal(0, code, out)
      assert.truthy(out:find("^202"), out)
      local body = fs.read(FIX .. "aws-acm/certificate-expired.json")
      assert.are.equal(401, srv:post("/hooks/acm", body, { ["x-api-key"] = "wrong-key-000" }).status)
      assert.are.equal(401, srv:post("/hooks/acm", body).status)
      assert.are.equal(401, srv:post("/hooks/acmbasic", body, { Authorization = "Basic ZXZlbnRicmlkZ2U6d3Jvbmc=" }).status)
      -- an SNS-only source wants a signed message; a header saying "SNS" changes nothing
      assert.are.equal(401, srv:post("/hooks/acmconfirm", body).status)
      assert.are.equal(401, srv:post("/hooks/acm", body, { ["x-amz-sns-message-type"] = "Notification" }).status)
    end)

    it("takes the same event through SNS, signed (certhook send --sign-key), as one event", function()
      local file = FIX .. "aws-acm/certificate-approaching-expiration.json"
      local out, code = send("--source acm " .. file)
      assert.are.equal(0, code, out)
      out, code = send("--source acm --sign-key sns.key " .. file)
      assert.are.equal(0, code, out)
      assert.truthy(out:find('^200 {"id":"aws%-acm:9c95e8e4%-96a4%-ef3f%-b739%-b6aa5b193a01","duplicate":true}'), out)
      -- a new event through SNS: its id and raw are the inner event's
      local ev = cjson.decode(fs.read(file))
      ev.id = "sns-e2e-0001"
      fs.write(dir .. "/inner.json", cjson.encode(ev))
      out, code = send("--source acm --sign-key sns.key inner.json")
      assert.are.equal(0, code, out)
      assert.truthy(out:find('^202 {"id":"aws%-acm:sns%-e2e%-0001"'), out)
      local e = assert(got("aws-acm:sns-e2e-0001"))
      assert.are.equal("aws.acm", e.raw.source)
      assert.are.equal(31, e.days_to_expiry)
    end)

    it("verifies SignatureVersion 1 and 2 made with the openssl command line", function()
      for version = 1, 2 do
        local ev = cjson.decode(fs.read(FIX .. "aws-acm/certificate-expired.json"))
        ev.id = "sns-openssl-" .. version
        local m = sns_message({ Type = "Notification", MessageId = "m-" .. version, TopicArn = TOPIC,
          Message = cjson.encode(ev), Timestamp = "2024-05-02T00:54:06.655Z", Subject = "ACM" }, version)
        local r = post_sns("acm", m)
        assert.are.equal(202, r.status, r.body)
        assert.are.equal("aws-acm:sns-openssl-" .. version, r.json.id)
      end
    end)

    it("refuses forged signatures, foreign certificate URLs and topics not allowed: 401", function()
      local before = events_count()
      local base = { Type = "Notification", MessageId = "forged-1", TopicArn = TOPIC,
        Message = fs.read(FIX .. "aws-acm/certificate-revoked.json"), Timestamp = "2024-05-02T00:54:06.655Z" }
      local m = sns_message(base, 2)
      m.Message = m.Message:gsub("Revoked", "Revokes")
      assert.are.equal(401, post_sns("acm", m).status) -- changed after signing
      for _, url in ipairs { "https://example.com/SimpleNotificationService-test.pem",
        "https://sns.us-east-1.amazonaws.com.evil.example/x.pem", "http://sns.us-east-1.amazonaws.com/x.pem",
        "https://sns.us-east-1.amazonaws.com:8443/x.pem" } do
        local fields = {}
        for k, v in pairs(base) do fields[k] = v end
        fields.SigningCertURL = url
        local r = post_sns("acm", sns_message(fields, 2))
        assert.are.equal(401, r.status, url)
        assert.truthy(r.json.message:find("SigningCertURL refused", 1, true), r.body)
      end
      local other = {}
      for k, v in pairs(base) do other[k] = v end
      other.TopicArn = "arn:aws:sns:us-east-1:123456789012:someone-elses"
      local r = post_sns("acm", sns_message(other, 2))
      assert.are.equal(401, r.status)
      assert.truthy(r.json.message:find("not in sources.acm.sns.topic_arns", 1, true))
      -- signed with another key than the certificate's
      local out, code = send("--source acm --sign-key other.key " .. FIX .. "aws-acm/certificate-revoked.json")
      assert.are.equal(1, code)
      assert.truthy(out:find("^401"), out)
      -- a source without sns takes no SNS message
      assert.are.equal(401, post_sns("acmbasic", sns_message(base, 2)).status)
      assert.are.equal(before, events_count())
    end)

    it("answers the subscription handshakes without journaling them", function()
      local before = events_count()
      local confirm = { Type = "SubscriptionConfirmation", MessageId = "c-1", Token = "2336412f37f-token",
        TopicArn = TOPIC, Message = "You have chosen to subscribe.", Timestamp = "2024-04-26T20:45:04.751Z",
        SubscribeURL = "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=" .. TOPIC .. "&Token=2336412f37f-token" }
      local r = post_sns("acm", sns_message(confirm, 1))
      assert.are.equal(200, r.status, r.body)
      assert.are.equal("pending", r.json.status)
      assert(fs.wait_for(function()
        for _, l in ipairs(srv:logs()) do
          if l.subscribe_url == confirm.SubscribeURL and l.topic_arn == TOPIC then return true end
        end
      end, 5), "the SubscribeURL to open is not in the log")
      -- confirm = true: a SubscribeURL off SNS's hosts is never fetched
      local off = {}
      for k, v in pairs(confirm) do off[k] = v end
      off.SubscribeURL = "https://example.com/?Action=ConfirmSubscription"
      r = post_sns("acmconfirm", sns_message(off, 2))
      assert.are.equal(401, r.status)
      assert.truthy(r.json.message:find("SubscribeURL refused", 1, true))
      local bye = {}
      for k, v in pairs(confirm) do bye[k] = v end
      bye.Type, bye.MessageId = "UnsubscribeConfirmation", "u-1"
      r = post_sns("acm", sns_message(bye, 2))
      assert.are.equal(200, r.status)
      assert.are.equal("unsubscribed", r.json.status)
      assert.are.equal(before, events_count())
    end)

    it("accepts text/plain, as SNS sends it; other providers still answer 415", function()
      local ev = cjson.decode(fs.read(FIX .. "aws-acm/health.AWS_ACM_RENEWAL_FAILURE.json"))
      local r = srv:request("POST", "/hooks/acm", { ["Content-Type"] = "text/plain; charset=UTF-8", ["x-api-key"] = ACM_KEY },
        cjson.encode(ev))
      assert.are.equal(202, r.status, r.body)
      assert.are.equal("certificate.renewal.failed", r.json.type)
      r = srv:request("POST", "/hooks/dc", { ["Content-Type"] = "text/plain", ["X-WEBHOOK-KEY"] = DC_KEY },
        fs.read(FIX .. "digicert/domain_validated.json"))
      assert.are.equal(415, r.status)
    end)
  end)

  describe("azure-keyvault", function()
    it("answers the Event Grid validation handshake with its code, journaling nothing", function()
      local before = events_count()
      local r = srv:post("/hooks/kv?key=" .. KV_KEY,
        fs.read(FIX .. "azure-keyvault/eventgrid.Microsoft.EventGrid.SubscriptionValidationEvent.json"),
        { ["aeg-event-type"] = "SubscriptionValidation" })
      assert.are.equal(200, r.status)
      assert.are.same({ validationResponse = "512d38b6-c7b8-40c8-89fe-f46f9e9622b6" }, r.json)
      assert.are.equal(401, srv:post("/hooks/kv?key=wrong",
        fs.read(FIX .. "azure-keyvault/eventgrid.Microsoft.EventGrid.SubscriptionValidationEvent.json")).status)
      assert.are.equal(before, events_count())
    end)

    it("answers the CloudEvents OPTIONS handshake with WebHook-Allowed-Origin", function()
      local r = srv:request("OPTIONS", "/hooks/kv?key=" .. KV_KEY, { ["WebHook-Request-Origin"] = "eventgrid.azure.net" })
      assert.are.equal(200, r.status)
      assert.are.equal("*", r.headers["webhook-allowed-origin"])
      r = srv:request("OPTIONS", "/hooks/kv", { ["WebHook-Request-Origin"] = "eventgrid.azure.net" })
      assert.are.equal(401, r.status)
      assert.is_nil(r.headers["webhook-allowed-origin"])
      assert.are.equal(405, srv:request("OPTIONS", "/hooks/dc", { ["WebHook-Request-Origin"] = "x" }).status)
    end)

    it("commits every event of a batch before the reply, and marks duplicates one by one", function()
      local text = fs.read(FIX .. "azure-keyvault/eventgrid.batch.json")
      local r = srv:post("/hooks/kv?key=" .. KV_KEY, text)
      assert.are.equal(202, r.status, r.body)
      assert.are.equal(3, #r.json.events)
      for _, e in ipairs(r.json.events) do
        assert.is_false(e.duplicate)
        -- committed before the reply
        assert.are.equal(1, tonumber(srv:sql(("SELECT count(*) FROM events WHERE id = '%s'"):format(e.id))[1][1]))
      end
      assert.are.same({ "certificate.expiration.upcoming", "unknown", "unknown" },
        { r.json.events[1].type, r.json.events[2].type, r.json.events[3].type })
      r = srv:post("/hooks/kv?key=" .. KV_KEY, text)
      assert.are.equal(200, r.status)
      for _, e in ipairs(r.json.events) do assert.is_true(e.duplicate) end
      local batch = cjson.decode(text)
      batch[2].id = "kv-e2e-new-1"
      r = srv:post("/hooks/kv?key=" .. KV_KEY, cjson.encode(batch))
      assert.are.equal(202, r.status)
      assert.are.same({ true, false, true }, { r.json.events[1].duplicate, r.json.events[2].duplicate,
        r.json.events[3].duplicate })
      assert.are.equal("azure-keyvault:kv-e2e-new-1", r.json.events[2].id)
      local e = assert(got("azure-keyvault:1af41fa2-54b2-4b03-ba46-f5088ba709c7"))
      assert.are.equal("flazkv-shared-neu-001", e.instance)
      assert.are.equal("1af41fa2-54b2-4b03-ba46-f5088ba709c7", e.raw.id) -- raw: its own element
    end)

    it("takes CloudEvents (a batch, application/cloudevents-batch+json) with the key in a header", function()
      local r = srv:request("POST", "/hooks/kv", { ["Content-Type"] = "application/cloudevents-batch+json",
        ["x-api-key"] = KV_KEY }, fs.read(FIX .. "azure-keyvault/cloudevents.batch.json"))
      assert.are.equal(202, r.status, r.body)
      assert.are.equal(3, #r.json.events)
      r = srv:request("POST", "/hooks/kv", { ["Content-Type"] = "application/cloudevents+json", ["x-api-key"] = "no" },
        fs.read(FIX .. "azure-keyvault/cloudevents.Microsoft.KeyVault.CertificateExpired.json"))
      assert.are.equal(401, r.status)
    end)
  end)

  describe("ibm-sm and digicert", function()
    it("ibm-sm: takes a notification with its token, one event for all its secrets", function()
      local out, code = send("--source sm " .. FIX .. "ibm-sm/secret_about_to_expire.in_10_days.multiple.json")
      assert.are.equal(0, code, out)
      local id = cjson.decode(out:match("^%d+ ([^\n]*)")).id
      local e = assert(got(id))
      assert.are.equal(2, #e.certificates)
      assert.are.equal(10, e.days_to_expiry)
      local r = srv:post("/hooks/sm", fs.read(FIX .. "ibm-sm/cloudevents.secret_rotated.json"),
        { Authorization = "Bearer " .. SM_TOKEN })
      assert.are.equal(202, r.status)
      assert.are.equal("ibm-sm:0a9f8e7d-6c5b-44a3-9b2f-f3e4d5c6b7a8", r.json.id)
      assert.are.equal(401, srv:post("/hooks/sm", fs.read(FIX .. "ibm-sm/secret_rotated.json"),
        { Authorization = "Bearer wrong-token" }).status)
    end)

    it("digicert: takes an event with X-WEBHOOK-KEY, the certificate read from its chain", function()
      local out, code = send("--source dc " .. FIX .. "digicert/certificate_issued.json")
      assert.are.equal(0, code, out)
      local id = cjson.decode(out:match("^%d+ ([^\n]*)")).id
      local e = assert(got(id))
      assert.are.equal("shop.example.com", e.hostname)
      assert.are.equal("1002", e.certificate.serial_number)
      assert.are.equal(401, srv:post("/hooks/dc", fs.read(FIX .. "digicert/domain_expired.json"),
        { ["X-WEBHOOK-KEY"] = "wrong-key-0123456789abcdef0123456789" }).status)
    end)
  end)

  -- CloudEvents in binary content mode (issue 21): the attributes in ce-* headers, the data as
  -- the body, as the cloudevents SDK's HTTP.binary makes them (tests/fixtures/<provider>/http/).
  describe("CloudEvents in binary content mode", function()
    local CASES = {
      { provider = "azure-keyvault", path = "/hooks/kv", auth = { ["x-api-key"] = KV_KEY },
        event = "Microsoft.KeyVault.CertificateNearExpiry", type = "certificate.expiration.upcoming" },
      { provider = "ibm-sm", path = "/hooks/sm", auth = { Authorization = "Bearer " .. SM_TOKEN },
        event = "secret_about_to_expire.in_30_days", type = "certificate.expiration.upcoming" },
    }
    local serial = 0

    -- The SDK's request of mode "binary" or "structured" for the case, its event id made a fresh
    -- one (the same id for both modes when given), with the case's credentials: headers, body.
    local function message(case, mode, id)
      local m = cjson.decode(fs.read(("%s%s/http/cloudevents-sdk.%s.%s.json"):format(FIX, case.provider, mode, case.event)))
      if not id then serial = serial + 1; id = "binary-mode-e2e-" .. serial end
      local headers, body = {}, m.body
      for k, v in pairs(m.headers) do headers[k] = v end
      for k, v in pairs(case.auth) do headers[k] = v end
      if mode == "binary" then
        headers["ce-id"] = id
      else
        body = body:gsub('"id":"[^"]*"', '"id":"' .. id .. '"', 1)
      end
      return headers, body, id
    end

    local function post(case, headers, body)
      return srv:request("POST", case.path, headers, body)
    end

    for _, case in ipairs(CASES) do
      it(case.provider .. ": the event a handler gets is the structured form's, the same id a duplicate", function()
        local hb, bb, id = message(case, "binary")
        local r = post(case, hb, bb)
        assert.are.equal(202, r.status, r.body)
        assert.are.same({ id = case.provider .. ":" .. id, type = case.type }, r.json)
        local binary = assert(got(r.json.id))
        local hs, bs, id2 = message(case, "structured")
        r = post(case, hs, bs)
        assert.are.equal(202, r.status, r.body)
        local structured = assert(got(r.json.id))
        -- datacontenttype is the binary request's Content-Type (HTTP binding §3.1.1)
        assert.are.equal(hb["content-type"], binary.raw.datacontenttype)
        assert.are.same(cjson.decode(bb), binary.raw.data)
        assert.are.equal(id, binary.raw.id)
        assert.are.equal(id2, structured.raw.id)
        assert.truthy(structured.certificate and structured.certificate.id, "a certificate event")
        for _, e in ipairs { binary, structured } do
          -- what differs between two events of one certificate: theirs, and the inventory's
          for _, k in ipairs { "id", "received_at", "repeats", "previous", "stale" } do e[k] = nil end
          e.raw.id, e.raw.datacontenttype = nil, nil
        end
        assert.are.same(structured, binary)

        -- the same event in structured then binary mode: a duplicate
        hs, bs, id = message(case, "structured")
        r = post(case, hs, bs)
        assert.are.equal(202, r.status, r.body)
        hb, bb = message(case, "binary", id)
        r = post(case, hb, bb)
        assert.are.equal(200, r.status, r.body)
        assert.are.same({ id = case.provider .. ":" .. id, duplicate = true }, r.json)
      end)
    end

    it("percent-decodes the ce-* header values (HTTP binding §3.1.3.2)", function()
      local headers, body, id = message(CASES[1], "binary")
      headers["ce-subject"] = "my%20cert%25%zz%00"
      local r = post(CASES[1], headers, body)
      assert.are.equal(202, r.status, r.body)
      assert.are.equal("my cert%%zz%00", assert(got(CASES[1].provider .. ":" .. id)).raw.subject)
    end)

    it("refuses a binary-mode request without ce-specversion, ce-id, ce-source or ce-type: 400 naming them", function()
      for _, case in ipairs(CASES) do
        local headers, body, id = message(case, "binary")
        headers["ce-specversion"], headers["ce-type"] = nil, nil
        local r = post(case, headers, body)
        assert.are.equal(400, r.status, r.body)
        assert.are.equal("bad_request", r.json.error)
        assert.truthy(r.json.message:find("binary content mode", 1, true), r.json.message)
        assert.are.equal("lacks ce-specversion, ce-type", r.json.message:match("lacks .*$"))
        headers = message(case, "binary")
        headers["ce-source"] = nil
        r = post(case, headers, body)
        assert.are.equal(400, r.status, r.body)
        assert.are.equal("lacks ce-source", r.json.message:match("lacks .*$"))
        assert.are.equal("0", srv:sql(("SELECT count(*) FROM events WHERE id = '%s:%s'"):format(case.provider, id))[1][1])
      end
    end)
  end)

  it("each provider's sample reaches a handler through certhook send --sample", function()
    for _, case in ipairs {
      { "--source acm --sample certificate.renewal.failed", "certificate.renewal.failed" },
      { "--source acm --sign-key sns.key --sample certificate.import.succeeded", "certificate.import.succeeded" },
      { "--source kv --sample certificate.expiration.upcoming", "certificate.expiration.upcoming" },
      { "--source sm --sample certificate.expiration.upcoming", "certificate.expiration.upcoming" },
      { "--source dc --sample certificate.validation.required", "certificate.validation.required" },
      { "--provider digicert --sample certificate.issuance.succeeded", "certificate.issuance.succeeded" },
    } do
      local out, code = send(case[1])
      assert.are.equal(0, code, case[1] .. ": " .. out)
      local reply = cjson.decode(out:match("^%d+ ([^\n]*)"))
      local id = (reply.events and reply.events[1] or reply).id
      assert.are.equal(case[2], assert(got(id), case[1]).type)
    end
    local out, code = send("--sample list")
    assert.are.equal(0, code)
    assert.truthy(out:find("aws-acm: certificate.issuance.succeeded", 1, true), out)
  end)

  it("labels the received counter with each source's provider", function()
    local metrics = http.get(srv.admin, "/metrics").body
    for _, s in ipairs { 'source="acm",provider="aws-acm"', 'source="kv",provider="azure-keyvault"',
      'source="sm",provider="ibm-sm"', 'source="dc",provider="digicert"' } do
      assert.truthy(metrics:find("certhook_events_received_total{" .. s, 1, true), s)
    end
  end)
end)
