-- valgrind memcheck of real sessions (make memcheck; CI): `certhook serve` under valgrind
-- (CERTHOOK is build/certhook-valgrind) takes every kind of request -- accepted, duplicate,
-- refused for each reason, IBM JWTs, HTTPS -- runs handlers that call out over HTTP, keep
-- state and fail, reloads, cuts off a stalled client and stops on SIGTERM. The run must end
-- with no memory error and no leak (definite, indirect or possible): valgrind's exit status
-- and its summary, both checked. A PostgreSQL journal too: claims of a killed server's events,
-- PostgreSQL restarting under the server, the command line against the URI.
local cjson = require "cjson"
local socket = require "socket"
local events = require "helpers.events"
local fs = require "helpers.fs"
local http = require "helpers.http"
local jwt = require "helpers.jwt"
local PG = require "helpers.pg"
local Server = require "helpers.server"
local Sink = require "helpers.sink"
local sns = require "helpers.sns"

local FIX = "tests/fixtures/"
local SECRET = "memcheck-secret-1"
local CF = { ["cf-webhook-auth"] = SECRET }

local HANDLER = [[
local certhook = require "certhook"
return {
  ["certificate.*"] = function(e)
    certhook.state.incr("seen", 1)
    certhook.state.set("last", { id = e.id, hostname = e.hostname }, 60)
    local resp, err = certhook.http.request { url = SINK .. "/echo", json = { id = e.id } }
    certhook.log.info("called", { status = resp and resp.status, err = err })
    local cert = certhook.tls.probe("127.0.0.1", { port = TLS_PORT })
    assert(cert and cert.verified == false and cert.serial_number)
    assert(certhook.once("memcheck", function(x) return x, { e.id } end, 1) == 1)
    assert(#certhook.certs.list { expiring_within = 90 * 86400 } >= 0)
    assert(e.repeats >= 1 and (e.previous == nil or e.previous.key))
  end,
  ["*"] = function(e)
    if e.type == "notification.test" then error("a failing handler") end
  end,
  -- certhook.exec: output, a program killed at its timeout, and (first attempt) a delivery
  -- stopped at delivery.timeout while its program runs
  -- a response that does not fit in the state's memory: pushing it raises after the resume,
  -- and the transfer (userdata) must still be freed
  ["certificate.deletion.succeeded"] = function(e)
    local big = ("x"):rep(3 * 1024 * 1024)
    assert(not pcall(certhook.http.post, SINK .. "/echo", big))
  end,
  ["notification.test"] = function(e)
    local r = assert(certhook.exec { argv = { "sh", "-c", "read x; echo $x" }, stdin = "hi\n" })
    assert(r.stdout == "hi\n" and r.status == 0)
    assert(certhook.exec { argv = { "sleep", "5" }, timeout = 0.2 } == nil)
    if certhook.state.incr("exec-attempts") == 1 then
      certhook.exec { argv = { "sleep", "60" }, timeout = 120 }
    end
  end,
}
]]

local function event()
  return (events.cloudflare())
end

-- valgrind's verdict from the server's log file(s): "" when clean, else the report.
local function verdict(dir)
  local out, files = {}, 0
  for file in io.popen(("ls '%s'/valgrind.*.log 2>/dev/null"):format(dir)):lines() do
    files = files + 1
    local log = fs.read(file)
    local errors = tonumber(log:match("ERROR SUMMARY: (%d+) errors"))
    if errors == nil then
      out[#out + 1] = file .. ": no summary (valgrind did not finish)\n" .. log
    elseif errors > 0 or log:match("definitely lost: [1-9]") or log:match("indirectly lost: [1-9]")
        or log:match("possibly lost: [1-9]") then
      out[#out + 1] = log
    end
  end
  if files == 0 then return "no valgrind log in " .. dir .. " (was CERTHOOK the valgrind wrapper?)" end
  return table.concat(out, "\n")
end

local function stop_clean(srv)
  local code = srv:stop()
  local report = verdict(srv.dir)
  assert.are.equal("", report)
  assert.are.equal(0, code, "valgrind exit status (99: errors or leaks)")
end

describe("valgrind memcheck", function()
  local sink, tls, tlsdir
  setup(function()
    sink = Sink.start()
    tlsdir = fs.tmpdir()
    tls = Sink.start { tls = { Sink.self_signed(tlsdir) } }
  end)
  teardown(function()
    sink:stop()
    tls:stop()
    fs.rm(tlsdir)
  end)

  it("serves, dispatches, reloads and stops without a memory error or leak", function()
    local dir = fs.tmpdir()
    local priv, pub = jwt.keypair(dir, "ibm")
    local srv = Server.start {
      config = ('sources = { cloudflare = { provider = "cloudflare", secret = %q },\n' ..
        '  ibm = { provider = "ibm-cm", public_key = %q } }\n' ..
        'delivery = { max_attempts = 2, backoff = 0.05, timeout = 8, memory_limit = 8 << 20 }\n' ..
        'limits = { max_body = 65536, request_timeout = 2 }\n' ..
        'watchdog = { interval = 0.2, before = { 3.001, 2.9999 } }\n')
        :format(SECRET, pub),
      handlers = { ["h.lua"] = ("SINK = %q\nTLS_PORT = %d\n"):format(sink.url, tls.port) .. HANDLER },
    }
    local body = event()
    assert.are.equal(202, srv:post("/hooks/cloudflare", body, CF).status)
    assert.are.equal(200, srv:post("/hooks/cloudflare", body, CF).status)
    assert.are.equal(401, srv:post("/hooks/cloudflare", event(), { ["cf-webhook-auth"] = "nope-nope" }).status)
    assert.are.equal(400, srv:post("/hooks/cloudflare", "{not json", CF).status)
    assert.are.equal(400, srv:post("/hooks/cloudflare", "[1,2,3]", CF).status)
    assert.are.equal(413, srv:post("/hooks/cloudflare", ("x"):rep(70000), CF).status)
    assert.are.equal(415, http.request(srv.port, "POST", "/hooks/cloudflare",
      { ["Content-Type"] = "text/plain", ["cf-webhook-auth"] = SECRET }, "{}").status)
    assert.are.equal(404, http.get(srv.port, "/nowhere").status)
    assert.are.equal(405, http.get(srv.port, "/hooks/cloudflare").status)
    assert.are.equal(202, srv:post("/hooks/cloudflare", fs.read(FIX .. "cloudflare/test-message.json"), CF).status)
    assert.are.equal(202, srv:post("/hooks/cloudflare", (events.cloudflare("deletion.succeeded")), CF).status)
    -- a certificate the watchdog warns of (3.001 days) and escalates (2.9999 days)
    assert.are.equal(202, srv:post("/hooks/cloudflare", (events.cloudflare("deployment.succeeded",
      { hostname = "wd.example", expires_on = os.date("!%Y-%m-%dT%H:%M:%SZ", os.time() + 3 * 86400) })), CF).status)
    local claims = fs.read(FIX .. "ibm-cm/v4.cert_issued.json")
    assert.are.equal(202, srv:post("/hooks/ibm", jwt.body(jwt.rs256(claims, priv))).status)
    assert.are.equal(401, srv:post("/hooks/ibm", jwt.body(jwt.none(claims))).status)
    assert.are.equal(401, srv:post("/hooks/ibm", jwt.body(jwt.hs256(claims, fs.read(pub)))).status)
    -- a client that stalls mid-headers is cut off
    local c = socket.tcp()
    c:settimeout(5)
    assert(c:connect("127.0.0.1", srv.port))
    c:send("POST /hooks/cloudflare HTTP/1.1\r\n")
    assert.are.equal("closed", select(2, c:receive("*l")))
    c:close()
    -- hostile framing: answered (past libmicrohttpd where it would not) and closed
    local function raw(port, text)
      local k = socket.tcp()
      k:settimeout(10)
      assert(k:connect("127.0.0.1", port))
      k:send(text)
      local line = k:receive("*l")
      k:close()
      return tonumber((line or ""):match("^HTTP/1%.1 (%d+)"))
    end
    local head = "POST /hooks/cloudflare HTTP/1.1\r\nHost: x\r\ncf-webhook-auth: " .. SECRET .. "\r\n"
    assert.are.equal(400, raw(srv.port, head .. "Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"))
    assert.are.equal(501, raw(srv.port, head .. "Transfer-Encoding: gzip\r\n\r\n"))
    assert.are.equal(400, raw(srv.port, head .. "Content-Length: abc\r\n\r\n"))
    assert.are.equal(400, raw(srv.port, head .. "X-Nul: a\0b\r\nContent-Length: 2\r\n\r\n{}"))
    assert.are.equal(413, raw(srv.port, head .. "Transfer-Encoding: chunked\r\n\r\n11170\r\n" .. ("a"):rep(70000)))
    assert.are.equal(403, raw(srv.admin, "GET /metrics HTTP/1.1\r\nHost: evil.example\r\n\r\n"))
    -- the handlers ran (one of them failed and was retried)
    assert(fs.wait_for(function() return #sink:requests() >= 2 end, 20))
    assert(fs.wait_for(function()
      return #srv:sql("SELECT 1 FROM deliveries WHERE status IN ('pending', 'running', 'retrying')") == 0
    end, 40))
    assert(fs.wait_for(function() -- the watchdog's warning was journaled
      return #srv:sql("SELECT 1 FROM events WHERE provider = 'certhook'") >= 1
    end, 30), "the watchdog raised nothing")
    -- reloads: SIGHUP (config and handlers) and POST /reload, one of them broken
    srv:signal("HUP")
    assert(fs.wait_for(function() return http.get(srv.admin, "/readyz").json.generation == 2 end, 20))
    fs.write(srv.dir .. "/handlers/broken.lua", "return {")
    assert.are.equal(422, http.request(srv.admin, "POST", "/reload").status)
    os.remove(srv.dir .. "/handlers/broken.lua")
    assert.are.equal(200, http.request(srv.admin, "POST", "/reload").status)
    assert.are.equal(200, http.get(srv.admin, "/metrics").status)
    assert.are.equal(202, srv:post("/hooks/cloudflare", event(), CF).status)
    stop_clean(srv)
    srv:cleanup()
    fs.rm(dir)
  end)

  it("serves HTTPS and swaps the certificate without a memory error or leak", function()
    local home = fs.tmpdir()
    local _, err, code = fs.run(("unset LD_PRELOAD; cd '%s' && openssl req -x509 -newkey rsa:2048 -nodes " ..
      "-keyout tls.key -out tls.crt -days 2 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1"):format(home))
    assert(code == 0, err)
    local srv = Server.start { dir = home,
      config = ('sources = { cloudflare = { provider = "cloudflare", secret = %q } }\n'):format(SECRET) ..
        'tls = { cert = "tls.crt", key = "tls.key" }\n' }
    fs.write(home .. "/body.json", event())
    local function post()
      local out = fs.run(("unset LD_PRELOAD; curl -s -o /dev/null -w '%%{http_code}' --cacert '%s/tls.crt' " ..
        "-H 'Content-Type: application/json' -H 'cf-webhook-auth: %s' --data-binary @'%s/body.json' " ..
        "https://127.0.0.1:%d/hooks/cloudflare"):format(home, SECRET, home, srv.port))
      return tonumber(out)
    end
    assert.are.equal(202, post())
    fs.run(("unset LD_PRELOAD; cd '%s' && openssl req -x509 -newkey rsa:2048 -nodes -keyout tls.key " ..
      "-out tls.crt -days 2 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1"):format(home))
    srv:signal("HUP")
    assert(fs.wait_for(function() return http.get(srv.admin, "/readyz").json.generation == 2 end, 20))
    assert.are.equal(200, post()) -- the renewed certificate verifies; the event is a duplicate
    stop_clean(srv)
    srv:cleanup()
  end)

  it("takes every provider's requests, Lua providers included, without a memory error or leak", function()
    local dir = fs.tmpdir()
    local key = sns.keypair(dir)
    fs.write(dir .. "/broken.lua", 'return { name = "broken", normalize = function(b) error("no " .. tostring(b.x)) end }')
    fs.write(dir .. "/slow.lua", 'return { name = "slow", normalize = function() local t = {} while true do t[#t % 1000 + 1] = {} end end }')
    local topic = "arn:aws:sns:us-east-1:123456789012:acm-events"
    local srv = Server.start { dir = dir, config = ([[
sources = {
  acm = { provider = "aws-acm", secret = "acm-key-0123", sns = { signing_cert = "sns.pem", topic_arns = { %q } } },
  kv = { provider = "azure-keyvault", secret = "kv-key-0123" },
  sm = { provider = "ibm-sm", secret = "sm-token-0123" },
  dc = { provider = "digicert", secret = "dc-key-0123456789" },
  am = { provider = "lua", script = %q, secret = "am-token-0123" },
  broken = { provider = "lua", script = "broken.lua", insecure = true },
  slow = { provider = "lua", script = "slow.lua", insecure = true, timeout = 0.3, memory_limit = 2 << 20 },
}
]]):format(topic, os.getenv("PWD") .. "/examples/providers/alertmanager.lua") }
    local function file(f) return fs.read(FIX .. f) end
    assert.are.equal(202, srv:post("/hooks/acm", file("aws-acm/certificate-expired.json"), { ["x-api-key"] = "acm-key-0123" }).status)
    local m = sns.message({ Type = "Notification", MessageId = "m1", TopicArn = topic,
      Message = file("aws-acm/certificate-revoked.json"), Timestamp = "2024-05-02T00:54:06.655Z" }, key, 1)
    assert.are.equal(202, srv:request("POST", "/hooks/acm", sns.request(m)).status)
    m.Message = m.Message .. " "
    assert.are.equal(401, srv:request("POST", "/hooks/acm", sns.request(m)).status)
    local confirm = sns.message({ Type = "SubscriptionConfirmation", MessageId = "c1", TopicArn = topic, Token = "t",
      Message = "confirm", Timestamp = "2024-05-02T00:54:06.655Z", SubscribeURL = "https://sns.us-east-1.amazonaws.com/?t" }, key)
    assert.are.equal(200, srv:request("POST", "/hooks/acm", sns.request(confirm)).status)
    local kv = "/hooks/kv?key=kv-key-0123"
    assert.are.equal(202, srv:post(kv, file("azure-keyvault/eventgrid.batch.json")).status)
    assert.are.equal(200, srv:post(kv, file("azure-keyvault/eventgrid.Microsoft.EventGrid.SubscriptionValidationEvent.json")).status)
    assert.are.equal(200, http.request(srv.port, "OPTIONS", kv, { ["WebHook-Request-Origin"] = "eventgrid.azure.net" }).status)
    assert.are.equal(202, srv:post(kv, file("azure-keyvault/cloudevents.Microsoft.KeyVault.CertificateExpired.json")).status)
    assert.are.equal(202, srv:post("/hooks/sm", file("ibm-sm/secret_about_to_expire.in_10_days.multiple.json"),
      { Authorization = "Bearer sm-token-0123" }).status)
    assert.are.equal(202, srv:post("/hooks/dc", file("digicert/certificate_issued.json"), { ["X-WEBHOOK-KEY"] = "dc-key-0123456789" }).status)
    assert.are.equal(202, srv:post("/hooks/am", file("alertmanager/x509-certificate-exporter.CertificateRenewal.firing.json"),
      { Authorization = "Bearer am-token-0123" }).status)
    assert.are.equal(202, srv:post("/hooks/broken", '{"x":"y"}').status)
    assert.are.equal(202, srv:post("/hooks/slow", '{"x":"z"}').status)
    srv:signal("HUP") -- a new configuration: the Lua providers' states are made again
    assert(fs.wait_for(function() return http.get(srv.admin, "/readyz").json.generation == 2 end, 20))
    assert.are.equal(202, srv:post("/hooks/am", file("alertmanager/cert-manager.CertManagerCertNotReady.firing.json"),
      { Authorization = "Bearer am-token-0123" }).status)
    assert.are.equal(202, srv:post("/hooks/broken", '{"x":"w"}').status)
    stop_clean(srv)
    srv:cleanup()
  end)

  it("serves a PostgreSQL journal, claims, reconnects and stops without a memory error or leak", function()
    local pg = PG.start()
    local db = pg:createdb()
    local config = ('sources = { cloudflare = { provider = "cloudflare", secret = %q } }\n'):format(SECRET) ..
      ('data = %q\ndelivery = { timeout = 1, lease = 2, backoff = 0.05, max_backoff = 0.2 }\n'):format(pg:uri(db))
    local handlers = { ["h.lua"] = [[
      local state = require("certhook").state
      return { ["*"] = function(e) state.incr("n") state.set("last", e.id, 60) end }]] }
    -- a server killed with events it holds (its own valgrind log is not looked at)
    local first = Server.start { config = config, handlers = handlers }
    local ids = {}
    for i = 1, 3 do
      local body, id = events.cloudflare()
      assert.are.equal(202, first:post("/hooks/cloudflare", body, CF).status)
      ids[i] = id
    end
    first:signal("KILL")
    first:wait_exit(10)
    first:cleanup()
    local srv = Server.start { config = config, handlers = handlers }
    for _ = 1, 3 do assert.are.equal(202, srv:post("/hooks/cloudflare", event(), CF).status) end
    assert(fs.wait_for(function()
      return pg:sql(db, "SELECT count(*) FROM certhook.events WHERE state <> 2")[1][1] == "0"
    end, 60), "the killed server's events were not claimed")
    -- PostgreSQL restarts under it: 503, then 202
    pg:stop_server("immediate")
    assert.are.equal(503, srv:post("/hooks/cloudflare", event(), CF).status)
    pg:start_server()
    assert(fs.wait_for(function() return srv:post("/hooks/cloudflare", event(), CF).status == 202 end, 30))
    -- the command line against the URI, and a data directory migrated into a database
    local dir = fs.tmpdir()
    fs.write(dir .. "/handlers/h.lua", 'return { ["*"] = function(e) require("certhook").state.incr("n", 1) end }')
    fs.write(dir .. "/event.json", event())
    local cmds = {
      ("events --data '%s'"):format(pg:uri(db)),
      ("replay '%s' --data '%s'"):format(ids[1], pg:uri(db)),
      ("run --event '%s/event.json' --handlers '%s/handlers' --data '%s/data'"):format(dir, dir, dir),
      ("migrate --from '%s/data' --to '%s'"):format(dir, pg:uri(pg:createdb())),
    }
    for i, cmd in ipairs(cmds) do
      os.execute(("mkdir -p '%s/vg%d'"):format(dir, i))
      local _, err, code = fs.run(("cd '%s/vg%d' && %s %s"):format(dir, i, Server.certhook, cmd))
      assert.are.equal("", verdict(("%s/vg%d"):format(dir, i)), cmd)
      assert.are.equal(0, code, cmd .. "\n" .. err)
    end
    assert(fs.wait_for(function()
      return pg:sql(db, "SELECT count(*) FROM certhook.replays")[1][1] == "0"
    end, 30), "the replay was not taken")
    stop_clean(srv)
    srv:cleanup()
    pg:cleanup()
    fs.rm(dir)
  end)

  it("runs the command line without a memory error or leak", function()
    local dir = fs.tmpdir()
    local priv, pub = jwt.keypair(dir, "ibm")
    fs.write(dir .. "/jwt.json", jwt.body(jwt.rs256(fs.read(FIX .. "ibm-cm/v4.cert_issued.json"), priv)))
    fs.write(dir .. "/handlers/h.lua", 'return { ["*"] = function(e) require("certhook").state.incr("n", 1) end }')
    local cmds = {
      ("normalize '%s/jwt.json' --public-key '%s'"):format(dir, pub),
      ("run --event '%s/jwt.json' --handlers '%s/handlers' --data '%s/data'"):format(dir, dir, dir),
      ("events --data '%s/data'"):format(dir),
      ("check --handlers '%s/handlers'"):format(dir),
      ("normalize '%s/%salertmanager/blackbox.BlackboxSslCertificateWillExpireSoon.firing.json' --provider lua " ..
        "--script '%s/examples/providers/alertmanager.lua'"):format(os.getenv("PWD"), FIX, os.getenv("PWD")),
      ("normalize '%s/%saws-acm/sns.Notification.certificate-approaching-expiration.json'"):format(os.getenv("PWD"), FIX),
      "send --sample list",
    }
    for i, cmd in ipairs(cmds) do
      os.execute(("mkdir -p '%s/vg%d'"):format(dir, i))
      local _, err, code = fs.run(("cd '%s/vg%d' && %s %s"):format(dir, i, Server.certhook, cmd))
      assert.are.equal("", verdict(("%s/vg%d"):format(dir, i)), cmd)
      assert.are.equal(0, code, cmd .. "\n" .. err)
    end
    fs.rm(dir)
  end)
end)
