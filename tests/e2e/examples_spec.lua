-- The example handlers that call out (examples/slack, examples/cloudflare-dcv,
-- examples/forward), served by certhook against a loopback sink standing in for Slack, the
-- Cloudflare API and an internal service.
local cjson = require "cjson"
local fs = require "helpers.fs"
local Server = require "helpers.server"
local Sink = require "helpers.sink"

local FIX = "tests/fixtures/"
local CF = { ["cf-webhook-auth"] = "s3cret" }
local SOURCES = 'sources = { cloudflare = { provider = "cloudflare", secret = "s3cret" } }\n' ..
  "delivery = { backoff = 0.05, max_backoff = 0.1 }\n"

local function serve(example, env)
  return Server.start {
    config = SOURCES,
    handlers = { [example:match("[^/]+$")] = fs.read("examples/" .. example) },
    env = env,
  }
end

local function requests_to(sink, pattern)
  local out = {}
  for _, r in ipairs(sink:requests()) do
    if r.path:match(pattern) then out[#out + 1] = r end
  end
  return out
end

local function wait_requests(sink, pattern, n)
  return fs.wait_for(function()
    local got = requests_to(sink, pattern)
    return #got >= n and got
  end, 10)
end

describe("example handlers", function()
  local sink
  setup(function() sink = Sink.start() end)
  teardown(function() sink:stop() end)

  it("slack.lua posts a failure with the DNS record to create, and an upcoming expiry", function()
    local srv = serve("slack/slack.lua", { SLACK_WEBHOOK_URL = sink.url .. "/slack/hook" })
    local failed = fs.read(FIX .. "cloudflare/ssl.custom_hostname_certificate.validation.failed.json")
    assert.are.equal(202, srv:post("/hooks/cloudflare", failed:gsub("<<WEBHOOK_ID>", "slack-1"), CF).status)
    local expiring = fs.read(FIX .. "cloudflare/ssl.custom_hostname_certificate.renewal.upcoming_certificate_expiration_notification.json")
    assert.are.equal(202, srv:post("/hooks/cloudflare", expiring:gsub("<<WEBHOOK_ID>", "slack-2"), CF).status)
    local got = assert(wait_requests(sink, "^/slack/hook$", 2))
    local texts = {}
    for _, r in ipairs(got) do
      assert.are.equal("POST", r.method)
      assert.are.equal("application/json", r.headers["content-type"])
      texts[#texts + 1] = cjson.decode(r.body).text
    end
    local all = table.concat(texts, "\n")
    assert.truthy(all:find("Certificate validation failed* for `blog.com`", 1, true), all)
    assert.truthy(all:find("_ca3-64ce913ebfe74edeb2e8813e3928e359.app.example2.com CNAME dcv.digicert.com", 1, true), all)
    assert.truthy(all:find("Certificate for `blog.com` expires", 1, true), all)
    srv:cleanup()
  end)

  it("slack.lua refuses to load without SLACK_WEBHOOK_URL", function()
    local dir = fs.tmpdir()
    fs.write(dir .. "/h/slack.lua", fs.read("examples/slack/slack.lua"))
    local _, err, code = fs.run(("env -u SLACK_WEBHOOK_URL %s check --handlers %s/h"):format(Server.certhook, dir))
    assert.are.equal(1, code)
    assert.truthy(err:match("slack%.lua:%d+: slack%.lua: set SLACK_WEBHOOK_URL"), err)
    fs.rm(dir)
  end)

  local function dcv_failure(id)
    local body = fs.read(FIX .. "cloudflare/ssl.custom_hostname_certificate.validation.failed.json")
    return (body:gsub('"<<ZONE_ID>"', '"zone42"'):gsub('"<<CUSTOM_HOSTNAME_ID>"', '"ch7"')
      :gsub("<<WEBHOOK_ID>", id))
  end

  local function handled(srv, id)
    return fs.wait_for(function()
      return #srv:sql(("SELECT 1 FROM %s d JOIN events e ON e.seq = d.event_seq " ..
        "WHERE e.id = '%s' AND d.status = 'done'"):format(srv:deliveries(), id)) == 1
    end, 10)
  end

  it("retrigger.lua asks Cloudflare to validate again, then not again within the period", function()
    local srv = serve("cloudflare-dcv/retrigger.lua",
      { CF_API_TOKEN = "tok3n", CF_API_BASE = sink.url .. "/cloudflare/client/v4" })
    local before = #requests_to(sink, "^/cloudflare/")
    assert.are.equal(202, srv:post("/hooks/cloudflare", dcv_failure("dcv-1"), CF).status)
    local got = assert(wait_requests(sink, "^/cloudflare/", before + 1))
    local r = got[#got]
    assert.are.equal("PATCH", r.method)
    assert.are.equal("/cloudflare/client/v4/zones/zone42/custom_hostnames/ch7", r.path)
    assert.are.equal("Bearer tok3n", r.headers.authorization)
    assert.are.same({ ssl = { method = "cname", type = "dv" } }, cjson.decode(r.body))
    assert(handled(srv, "cloudflare:dcv-1"))
    assert.are.equal(1, #srv:sql("SELECT 1 FROM state WHERE key = 'cf-dcv-retrigger:ch7' AND expires_at > 0"))
    assert.are.equal(202, srv:post("/hooks/cloudflare", dcv_failure("dcv-2"), CF).status)
    assert(handled(srv, "cloudflare:dcv-2"))
    assert.are.equal(before + 1, #requests_to(sink, "^/cloudflare/")) -- backed off
    assert.truthy(srv:log_text():find("DCV check asked for recently", 1, true))
    srv:cleanup()
  end)

  it("retrigger.lua logs a refusal and does not retry it", function()
    local srv = serve("cloudflare-dcv/retrigger.lua",
      { CF_API_TOKEN = "tok3n", CF_API_BASE = sink.url .. "/cloudflare-refuse" })
    local before = #requests_to(sink, "^/cloudflare%-refuse/")
    assert.are.equal(202, srv:post("/hooks/cloudflare", dcv_failure("dcv-3"), CF).status)
    assert(handled(srv, "cloudflare:dcv-3"))
    assert.truthy(srv:log_text():find("Cloudflare refused the DCV check", 1, true))
    assert.are.equal(before + 1, #requests_to(sink, "^/cloudflare%-refuse/"))
    assert.are.equal(0, #srv:sql("SELECT 1 FROM state"))
    srv:cleanup()
  end)

  it("retrigger.lua retries when the API is unreachable", function()
    local srv = serve("cloudflare-dcv/retrigger.lua",
      { CF_API_TOKEN = "tok3n", CF_API_BASE = "http://127.0.0.1:1" })
    assert.are.equal(202, srv:post("/hooks/cloudflare", dcv_failure("dcv-4"), CF).status)
    assert(fs.wait_for(function()
      local r = srv:sql("SELECT attempts FROM " .. srv:deliveries())
      return r[1] and tonumber(r[1][1]) >= 2
    end, 10), "the delivery was not retried")
    assert.truthy(srv:log_text():find("Cloudflare API unreachable", 1, true))
    srv:cleanup()
  end)

  it("forward.lua posts every event, without raw, with its id in a header", function()
    local srv = serve("forward/forward.lua",
      { FORWARD_URL = sink.url .. "/ingest", FORWARD_TOKEN = "svc-token" })
    local cf = fs.read(FIX .. "cloudflare/ssl.custom_hostname_certificate.deployment.succeeded.json")
    local r = srv:post("/hooks/cloudflare", cf:gsub("<<WEBHOOK_ID>", "fwd-1"), CF)
    assert.are.equal(202, r.status)
    local got = assert(wait_requests(sink, "^/ingest$", 1))
    local req = got[#got]
    assert.are.equal("POST", req.method)
    assert.are.equal("Bearer svc-token", req.headers.authorization)
    assert.are.equal("cloudflare:fwd-1", req.headers["x-certhook-event"])
    local e = cjson.decode(req.body)
    assert.are.equal("cloudflare:fwd-1", e.id)
    assert.are.equal("certificate.deployment.succeeded", e.type)
    assert.are.equal("blog.com", e.hostname)
    assert.is_nil(e.raw)
    assert.are.equal("active", e.status.to)
    srv:cleanup()
  end)

  it("forward.lua includes raw with FORWARD_RAW=1", function()
    local srv = serve("forward/forward.lua", { FORWARD_URL = sink.url .. "/ingest-raw", FORWARD_RAW = "1" })
    local cf = fs.read(FIX .. "cloudflare/ssl.custom_hostname_certificate.deployment.succeeded.json")
    assert.are.equal(202, srv:post("/hooks/cloudflare", cf:gsub("<<WEBHOOK_ID>", "fwd-raw"), CF).status)
    local got = assert(wait_requests(sink, "^/ingest%-raw$", 1))
    local e = cjson.decode(got[#got].body)
    assert.are.equal("fwd-raw", e.raw.metadata.event.id)
    assert.are.equal("blog.com", e.raw.data.hostname)
    srv:cleanup()
  end)
end)
