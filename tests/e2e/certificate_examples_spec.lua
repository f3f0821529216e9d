-- The certificate examples (examples/certificates): the DCV notice sent once per run of
-- failures, the page only for an overdue renewal (from the watchdog), the probe that retries
-- until the edge serves the new certificate -- served by certhook against loopback sinks.
local cjson = require "cjson"
local events = require "helpers.events"
local fs = require "helpers.fs"
local Server = require "helpers.server"
local Sink = require "helpers.sink"

local CF = { ["cf-webhook-auth"] = "s3cret" }
local DAY = 86400
local CONFIG = 'sources = { cloudflare = { provider = "cloudflare", secret = "s3cret" } }\n' ..
  "delivery = { backoff = 0.05, max_backoff = 0.1, max_attempts = 3 }\n"

local function serve(example, env, config)
  return Server.start {
    config = CONFIG .. (config or ""),
    handlers = { [example:match("[^/]+$")] = fs.read("examples/certificates/" .. example) },
    env = env,
  }
end

local function requests_to(sink, path)
  local out = {}
  for _, r in ipairs(sink:requests()) do
    if r.path == path then out[#out + 1] = cjson.decode(r.body) end
  end
  return out
end

local function iso(t) return os.date("!%Y-%m-%dT%H:%M:%SZ", t) end

local function post(srv, kind, opts)
  opts.created_at = opts.created_at or iso(os.time()) -- in order
  local body, id = events.cloudflare(kind, opts)
  assert.are.equal(202, srv:post("/hooks/cloudflare", body, CF).status)
  return id
end

describe("certificate examples", function()
  local sink
  setup(function() sink = Sink.start() end)
  teardown(function() sink:stop() end)

  it("dcv-once.lua tells the customer at the first failure, then every REMIND_AFTER, again after a success", function()
    local srv = serve("dcv-once.lua", { NOTIFY_URL = sink.url .. "/notify", REMIND_AFTER = "3" })
    local host = "dcv-once.example"
    for _ = 1, 4 do
      local id = post(srv, "validation.failed", { hostname = host })
      assert(srv:wait_status(id, "dcv-once.lua:certificate.validation.failed", "done"))
    end
    post(srv, "validation.succeeded", { hostname = host }) -- committed before the next one: resets repeats
    local id = post(srv, "validation.failed", { hostname = host })
    assert(srv:wait_status(id, "dcv-once.lua:certificate.validation.failed", "done"))
    local got = requests_to(sink, "/notify")
    local repeats = {}
    for _, n in ipairs(got) do repeats[#repeats + 1] = n.repeats end
    assert.are.same({ 1, 3, 1 }, repeats)
    assert.truthy(got[1].text:find("Please create the DNS record _ca3-64ce913ebfe74edeb2e8813e3928e359.app.example2.com CNAME dcv.digicert.com", 1, true), got[1].text)
    srv:cleanup()
  end)

  it("overdue-page.lua pages once when the watchdog says the renewal is overdue", function()
    local t1, t2 = (3 * DAY + 60) / DAY, (3 * DAY - 3) / DAY
    local srv = serve("overdue-page.lua", { PAGE_URL = sink.url .. "/page", PAGE_ROUTING_KEY = "rk" },
      ("watchdog = { interval = 0.2, before = { %.10f, %.10f } }\n"):format(t1, t2))
    post(srv, "deployment.succeeded", { hostname = "page.example", expires_on = iso(os.time() + 3 * DAY) })
    local pages = assert(fs.wait_for(function()
      local p = requests_to(sink, "/page")
      return #p > 0 and p
    end, 10), "no page")
    os.execute("sleep 1")
    pages = requests_to(sink, "/page")
    assert.are.equal(1, #pages)
    assert.are.equal("rk", pages[1].routing_key)
    assert.truthy(pages[1].dedup_key:match("^watchdog:cloudflare:cert%-page%.example:%d+:overdue$"), pages[1].dedup_key)
    assert.truthy(pages[1].payload.summary:match("^Renewal of page%.example is overdue"))
    srv:cleanup()
  end)

  it("probe-after-deploy.lua is done when the edge serves the new certificate, and retries until then", function()
    local dir = fs.tmpdir()
    local cert, key = Sink.self_signed(dir)
    local tls = Sink.start { tls = { cert, key } }
    local enddate = assert(fs.run(("openssl x509 -in '%s' -noout -enddate"):format(cert))):match("notAfter=([^\n]+)")
    local not_after = tonumber((assert(fs.run(("date -u -d '%s' +%%s"):format(enddate)))))
    local srv = serve("probe-after-deploy.lua", { PROBE_PORT = tostring(tls.port), PROBE_CA_FILE = cert })
    local handler = "probe-after-deploy.lua:certificate.deployment.succeeded"
    local ok = post(srv, "deployment.succeeded", { hostname = "127.0.0.1", cert_id = "served", expires_on = iso(not_after) })
    local stale = post(srv, "deployment.succeeded", { hostname = "127.0.0.1", cert_id = "next",
      expires_on = iso(not_after + 30 * DAY) })
    assert(srv:wait_status(ok, handler, "done"), "the served certificate was not accepted")
    local row = assert(srv:wait_status(stale, handler, "dead", 10), "the old certificate was accepted")
    assert.truthy(row[3]:match("still serves the certificate expiring"), row[3])
    assert.truthy(srv:log_text():match("the edge serves the new certificate"))
    srv:cleanup()
    tls:stop()
    fs.rm(dir)
  end)
end)
