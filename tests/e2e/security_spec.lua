-- Hostile input and keeping out whoever does not belong: HTTPS on the webhook listener (TLS 1.2+,
-- certificate reload), key rotation (IBM key directories; Cloudflare secret lists are in
-- reload_spec), slow and abusive clients (stalled connections, connection and header limits,
-- overload answered with Retry-After), admin isolation, secrets hygiene. Every server the e2e
-- specs start is also checked for credentials in its log (helpers/server.lua, cleanup).
local cjson = require "cjson"
local socket = require "socket"
local events = require "helpers.events"
local fs = require "helpers.fs"
local http = require "helpers.http"
local jwt = require "helpers.jwt"
local Server = require "helpers.server"

local FIX = "tests/fixtures/"
local SECRET = "rotating-secret-0001"
local CF = { ["cf-webhook-auth"] = SECRET }
local SOURCES = ('sources = { cloudflare = { provider = "cloudflare", secret = %q } }\n'):format(SECRET)

local event = events.cloudflare

-- Runs a command without the sanitizer preload (curl and openssl are not instrumented).
local function run(cmd)
  return fs.run("unset LD_PRELOAD; " .. cmd)
end

-- A self-signed certificate for 127.0.0.1 with the given CN: cert, key paths in dir.
local function certificate(dir, cn)
  local cert, key = ("%s/%s.crt"):format(dir, cn), ("%s/%s.key"):format(dir, cn)
  local _, err, code = run(("openssl req -x509 -newkey rsa:2048 -nodes -keyout '%s' -out '%s' " ..
    "-days 2 -subj /CN=%s -addext subjectAltName=IP:127.0.0.1"):format(key, cert, cn))
  assert(code == 0, err)
  return cert, key
end

-- POSTs a file over HTTPS with curl, trusting ca: status, body.
local function https_post(port, ca, body, headers)
  local dir = fs.tmpdir()
  fs.write(dir .. "/body.json", body)
  local h = ""
  for k, v in pairs(headers or {}) do h = h .. ("-H '%s: %s' "):format(k, v) end
  local out, err, code = run(("curl -sS -o '%s/reply' -w '%%{http_code}' --cacert '%s' " ..
    "-H 'Content-Type: application/json' %s --data-binary @'%s/body.json' " ..
    "https://127.0.0.1:%d/hooks/cloudflare"):format(dir, ca, h, dir, port))
  local reply = fs.read(dir .. "/reply")
  fs.rm(dir)
  assert(code == 0, err)
  return tonumber(out), reply
end

-- The subject CN of the certificate the server presents.
local function served_cn(port)
  local out = run(("openssl s_client -connect 127.0.0.1:%d </dev/null 2>/dev/null | " ..
    "openssl x509 -noout -subject"):format(port))
  return out and out:match("CN%s*=%s*([%w.-]+)")
end

local function generation(srv)
  return http.get(srv.admin, "/readyz").json.generation
end

-- Sends SIGHUP and waits for the reload to succeed (the generation moves on) or fail (logged).
local function sighup(srv)
  local before, line = #srv:logs(), nil
  srv:signal("HUP")
  local outcome = fs.wait_for(function()
    local logs = srv:logs()
    for i = before + 1, #logs do
      line = logs[i]
      if line.message == "reloaded" then return "reloaded" end
      if line.message == "reload failed" then return "failed" end
    end
  end, 5)
  return outcome, line
end

describe("HTTPS on the webhook listener", function()
  local srv, dir, cert1
  setup(function()
    dir = fs.tmpdir()
    cert1 = certificate(dir, "certhook-one")
    certificate(dir, "certhook-two")
    fs.write(dir .. "/garbage.crt", "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    local home = fs.tmpdir()
    os.execute(("cp '%s/certhook-one.crt' '%s/tls.crt' && cp '%s/certhook-one.key' '%s/tls.key'")
      :format(dir, home, dir, home))
    srv = Server.start { dir = home, config = SOURCES .. 'tls = { cert = "tls.crt", key = "tls.key" }\n' }
  end)
  teardown(function()
    srv:cleanup()
    fs.rm(dir)
  end)

  it("accepts a webhook over HTTPS and says so at start", function()
    local body, id = event()
    local status, reply = https_post(srv.port, cert1, body, CF)
    assert.are.equal(202, status, reply)
    assert.are.equal(id, cjson.decode(reply).id)
    local listening
    for _, l in ipairs(srv:logs()) do
      if l.message == "listening" then listening = l end
    end
    assert.are.equal("https", listening.scheme)
  end)

  it("still checks the secret over HTTPS", function()
    local status = https_post(srv.port, cert1, (event()), { ["cf-webhook-auth"] = "not-the-secret" })
    assert.are.equal(401, status)
  end)

  it("speaks no plain HTTP on the HTTPS port", function()
    local c = socket.tcp()
    c:settimeout(5)
    assert(c:connect("127.0.0.1", srv.port))
    c:send("GET /hooks/cloudflare HTTP/1.1\r\nHost: x\r\n\r\n")
    local line = c:receive("*l")
    c:close()
    assert.is_nil(line and line:match("^HTTP/1"))
  end)

  it("refuses TLS 1.0 and 1.1 and speaks TLS 1.2 and 1.3", function()
    for _, v in ipairs { "tls1", "tls1_1" } do
      local out = run(("openssl s_client -connect 127.0.0.1:%d -%s -cipher 'DEFAULT@SECLEVEL=0' </dev/null 2>&1")
        :format(srv.port, v))
      assert.truthy(out:match("Cipher is %(NONE%)"), v .. ": " .. out)
    end
    for _, v in ipairs { { "tls1_2", "TLSv1.2" }, { "tls1_3", "TLSv1.3" } } do
      local out = run(("openssl s_client -connect 127.0.0.1:%d -%s </dev/null 2>&1"):format(srv.port, v[1]))
      assert.truthy(out:find("New, " .. v[2] .. ", Cipher is ", 1, true), out)
    end
  end)

  it("presents a renewed certificate after SIGHUP, and keeps it when the new one is broken", function()
    local pid = srv.pid
    assert.are.equal("certhook-one", served_cn(srv.port))
    local tls = srv.dir .. "/tls.crt"
    os.execute(("cp '%s/certhook-two.crt' '%s' && cp '%s/certhook-two.key' '%s/tls.key'"):format(dir, tls, dir, srv.dir))
    assert.are.equal("reloaded", sighup(srv))
    assert.are.equal("certhook-two", served_cn(srv.port))
    local status = https_post(srv.port, dir .. "/certhook-two.crt", (event()), CF)
    assert.are.equal(202, status)
    -- a certificate that does not load: the reload fails, the served one stays
    os.execute(("cp '%s/garbage.crt' '%s'"):format(dir, tls))
    local outcome, line = sighup(srv)
    assert.are.equal("failed", outcome)
    assert.truthy(line.error:match("tls%.crt"), line.error)
    assert.are.equal("certhook-two", served_cn(srv.port))
    -- a certificate that does not match the key: the same
    os.execute(("cp '%s/certhook-one.crt' '%s'"):format(dir, tls))
    assert.are.equal("failed", (sighup(srv)))
    assert.are.equal("certhook-two", served_cn(srv.port))
    assert.are.equal(pid, srv.pid)
  end)
end)

describe("key rotation", function()
  it("accepts IBM JWTs signed by any key of a directory, and refuses a key taken out", function()
    local dir = fs.tmpdir()
    local a_priv, a_pub = jwt.keypair(dir, "a")
    local b_priv, b_pub = jwt.keypair(dir, "b")
    local home = fs.tmpdir()
    os.execute(("mkdir -p '%s/keys' && cp '%s' '%s/keys/a.pem'"):format(home, a_pub, home))
    local srv = Server.start { dir = home,
      config = 'sources = { ibm = { provider = "ibm-cm", public_key = "keys" } }\n' }
    os.execute(("cp '%s' '%s/keys/b.pem'"):format(b_pub, home))
    assert.are.equal("reloaded", sighup(srv)) -- the directory is read at each (re)load
    local claims = cjson.decode(fs.read(FIX .. "ibm-cm/v4.cert_issued.json"))
    local function send(priv)
      claims.nonce = ("%d-%d"):format(os.time(), math.random(1e9))
      return srv:post("/hooks/ibm", jwt.body(jwt.rs256(cjson.encode(claims), priv)))
    end
    assert.are.equal(202, send(a_priv).status)
    assert.are.equal(202, send(b_priv).status)
    os.remove(srv.dir .. "/keys/a.pem")
    assert.are.equal("reloaded", sighup(srv))
    local r = send(a_priv)
    assert.are.equal(401, r.status)
    assert.are.equal("unauthorized", r.json.error)
    assert.are.equal(202, send(b_priv).status)
    os.remove(srv.dir .. "/keys/b.pem")
    local outcome, line = sighup(srv) -- no key left: refused, the last good set stays
    assert.are.equal("failed", outcome)
    assert.truthy(line.error:match("no %*%.pem file"), line.error)
    assert.are.equal(202, send(b_priv).status)
    srv:cleanup()
    fs.rm(dir)
  end)
end)

describe("slow and abusive clients", function()
  it("cuts off stalled connections while serving a real request at once", function()
    -- all from one address: the per-address limit is off for this one
    local srv = Server.start { config = SOURCES .. "limits = { request_timeout = 2, max_connections_per_ip = 0 }\n" }
    local stalled = {}
    for i = 1, 300 do
      local c = socket.tcp()
      c:settimeout(2)
      assert(c:connect("127.0.0.1", srv.port))
      c:send("POST /hooks/cloudflare HTTP/1.1\r\nHost: x\r\n")
      c:settimeout(0)
      stalled[i] = c
    end
    -- slowloris: every client keeps trickling header lines, so it is never silent
    local t0, served_in, status = socket.gettime(), nil, nil
    while socket.gettime() - t0 < 4 do
      for i, c in ipairs(stalled) do c:send(("X-Slow-%d: a\r\n"):format(i)) end
      if not served_in and socket.gettime() - t0 > 0.5 then
        local t = socket.gettime()
        status = srv:post("/hooks/cloudflare", (event()), CF).status
        served_in = socket.gettime() - t
      end
      socket.sleep(0.25)
    end
    assert.are.equal(202, status)
    assert.is_true(served_in < 1, ("the real request took %.3f s"):format(served_in))
    local closed = 0
    for _, c in ipairs(stalled) do
      c:settimeout(1)
      local _, err = c:receive(1)
      if err == "closed" then closed = closed + 1 end
      c:close()
    end
    assert.are.equal(300, closed)
    local metrics = http.get(srv.admin, "/metrics").body
    assert.is_true(tonumber(metrics:match("certhook_connections_cut_off_total (%d+)")) >= 300)
    srv:cleanup()
  end)

  it("closes connections past limits.max_connections and serves again once they go", function()
    local srv = Server.start { config = SOURCES .. "limits = { max_connections = 4 }\n" }
    local held = {}
    for i = 1, 4 do
      held[i] = socket.tcp()
      held[i]:settimeout(2)
      assert(held[i]:connect("127.0.0.1", srv.port))
    end
    socket.sleep(0.2)
    local extra = socket.tcp()
    extra:settimeout(2)
    assert(extra:connect("127.0.0.1", srv.port)) -- the kernel accepts; certhook closes it
    extra:send("POST /hooks/cloudflare HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    local line, err = extra:receive("*l")
    assert.is_nil(line)
    assert.truthy(err == "closed" or err:match("reset"), err)
    extra:close()
    for _, c in ipairs(held) do c:close() end
    assert(fs.wait_for(function()
      local ok, r = pcall(srv.post, srv, "/hooks/cloudflare", (event()), CF)
      return ok and r.status == 202
    end, 5))
    srv:cleanup()
  end)

  it("answers 431 to headers over limits.max_header", function()
    local srv = Server.start { config = SOURCES .. "limits = { max_header = 4096 }\n" }
    local body = event()
    local ok = srv:post("/hooks/cloudflare", body, { ["cf-webhook-auth"] = SECRET, ["X-Pad"] = ("p"):rep(2000) })
    assert.are.equal(202, ok.status)
    local r = srv:post("/hooks/cloudflare", (event()), { ["cf-webhook-auth"] = SECRET, ["X-Pad"] = ("p"):rep(5000) })
    assert.are.equal(431, r.status)
    assert.are.equal("header_too_large", r.json.error)
    -- far past it libmicrohttpd refuses on its own (431, connection closed): it never holds
    -- that much; a client still sending may see the close before the reply
    local ok, far = pcall(srv.post, srv, "/hooks/cloudflare", (event()),
      { ["cf-webhook-auth"] = SECRET, ["X-Pad"] = ("p"):rep(64000) })
    if ok then
      assert.are.equal(431, far.status)
    else
      assert.truthy(tostring(far):match("closed") or tostring(far):match("reset"), tostring(far))
    end
    srv:cleanup()
  end)

  it("answers 503 with Retry-After past limits.max_backlog, and accepts again once it drains", function()
    local srv = Server.start {
      config = SOURCES .. "limits = { max_backlog = 2 }\ndelivery = { concurrency = 1 }\n",
      handlers = { ["slow.lua"] = [[
        return { ["*"] = function(e)
          local f = assert(io.open("started.log", "a")) f:write(e.id, "\n") f:close()
          local t = os.clock()
          while os.clock() - t < 1.5 do end -- holds the dispatcher: the next events queue up
        end }]] },
    }
    local body1, id1 = event()
    assert.are.equal(202, srv:post("/hooks/cloudflare", body1, CF).status)
    assert(fs.wait_for(function() return (fs.read(srv.dir .. "/started.log") or ""):find(id1, 1, true) end, 5))
    assert.are.equal(202, srv:post("/hooks/cloudflare", (event()), CF).status)
    assert.are.equal(202, srv:post("/hooks/cloudflare", (event()), CF).status)
    local refused_body, refused_id = event()
    local r = srv:post("/hooks/cloudflare", refused_body, CF)
    assert.are.equal(503, r.status)
    assert.are.equal("overloaded", r.json.error)
    assert.truthy(tonumber(r.headers["retry-after"]))
    assert.are.equal(0, #srv:sql(("SELECT 1 FROM events WHERE id = '%s'"):format(refused_id)))
    -- the provider retries later: accepted once the backlog is down
    assert(fs.wait_for(function() return srv:post("/hooks/cloudflare", refused_body, CF).status == 202 end, 10))
    assert(fs.wait_for(function() return (fs.read(srv.dir .. "/started.log") or ""):find(refused_id, 1, true) end, 10))
    srv:cleanup()
  end)

  -- an accepted event waits for its fold (in the writer) before the dispatcher has it: it counts
  it("counts an accepted event still waiting for its fold in limits.max_backlog #sqlite", function()
    local srv = Server.start { config = SOURCES .. "limits = { max_backlog = 1 }\n",
                               env = { CERTHOOK_TEST_HOLD_FOLD = "hold" } }
    fs.write(srv.dir .. "/hold", "") -- the fold waits: the event is journaled, not yet dispatched
    assert.are.equal(202, srv:post("/hooks/cloudflare", (event()), CF).status)
    local refused_body, refused_id = event()
    local r = srv:post("/hooks/cloudflare", refused_body, CF)
    assert.are.equal(503, r.status)
    assert.are.equal("overloaded", r.json.error)
    os.remove(srv.dir .. "/hold")
    assert(fs.wait_for(function() return srv:post("/hooks/cloudflare", refused_body, CF).status == 202 end, 10))
    assert.are.equal(1, #srv:sql(("SELECT 1 FROM events WHERE id = '%s'"):format(refused_id)))
    srv:cleanup()
  end)
end)

describe("admin isolation", function()
  it("never serves the admin endpoints on the webhook listener", function()
    local srv = Server.start { config = SOURCES }
    for _, p in ipairs { { "GET", "/healthz" }, { "GET", "/readyz" }, { "GET", "/metrics" },
                         { "POST", "/reload" }, { "GET", "/hooks/../healthz" } } do
      local r = http.request(srv.port, p[1], p[2])
      assert.are.equal(404, r.status, p[2])
    end
    assert.are.equal(200, http.get(srv.admin, "/healthz").status)
    srv:cleanup()
  end)

  it("refuses a non-loopback admin address without admin_token", function()
    local dir = fs.tmpdir()
    fs.write(dir .. "/certhook.conf.lua", SOURCES .. 'listen = "127.0.0.1:0"\nadmin = "0.0.0.0:0"\n')
    local _, err, code = fs.run(("cd '%s' && %s serve --config certhook.conf.lua"):format(dir, Server.certhook))
    assert.are.equal(1, code)
    assert.truthy(err:match("not a loopback address"), err)
    assert.truthy(err:match("admin_token"), err)
    fs.rm(dir)
  end)

  it("requires the bearer token on every admin endpoint but /healthz when admin_token is set", function()
    local token = "admin-token-0123456789abcdef"
    local srv = Server.start { config = SOURCES .. ('admin = "0.0.0.0:0"\nadmin_token = %q\n'):format(token) }
    assert.are.equal(200, http.get(srv.admin, "/healthz").status)
    for _, p in ipairs { { "GET", "/readyz" }, { "GET", "/metrics" }, { "POST", "/reload" } } do
      local r = http.request(srv.admin, p[1], p[2])
      assert.are.equal(401, r.status, p[2])
      assert.are.equal("unauthorized", r.json.error)
      assert.truthy(r.headers["www-authenticate"]:match("^Bearer"))
      r = http.request(srv.admin, p[1], p[2], { Authorization = "Bearer admin-token-0123456789abcdeX" })
      assert.are.equal(401, r.status, p[2])
    end
    local r = http.request(srv.admin, "GET", "/metrics", { Authorization = "Bearer " .. token })
    assert.are.equal(200, r.status)
    -- certhook reload sends the token from the config
    local out, err, code = fs.run(("cd '%s' && %s reload --config certhook.conf.lua --admin 127.0.0.1:%d")
      :format(srv.dir, Server.certhook, srv.admin))
    assert.are.equal(0, code, err)
    assert.truthy(out:match("generation 2"), out)
    srv:cleanup()
  end)
end)

describe("secrets hygiene", function()
  it("refuses a world-readable config that holds a secret, and says how to fix it", function()
    local dir = fs.tmpdir()
    local conf = dir .. "/certhook.conf.lua"
    fs.write(conf, SOURCES .. 'listen = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\n')
    os.execute("chmod 644 '" .. conf .. "'")
    local _, err, code = fs.run(("cd '%s' && %s serve --config certhook.conf.lua"):format(dir, Server.certhook))
    assert.are.equal(1, code)
    assert.truthy(err:match("readable by every user"), err)
    assert.truthy(err:match("chmod 600"), err)
    assert.truthy(err:match("sources%.cloudflare%.secret"), err)
    assert.falsy(err:find(SECRET, 1, true), err)
    -- an explicit override for throwaway setups: a warning instead
    os.execute("mkdir -p '" .. dir .. "/handlers'")
    local _, err2, code2 = fs.run(("cd '%s' && CERTHOOK_ALLOW_READABLE_SECRETS=1 %s check --config certhook.conf.lua")
      :format(dir, Server.certhook))
    assert.are.equal(0, code2, err2)
    assert.truthy(err2:match("warning: .*readable by every user"), err2)
    -- secrets from the environment: a readable config is fine
    fs.write(conf, 'sources = { cloudflare = { provider = "cloudflare", secret = os.getenv("CF_SECRET") } }\n')
    os.execute("chmod 644 '" .. conf .. "'")
    local _, err3, code3 = fs.run(("cd '%s' && CF_SECRET=%s %s check --config certhook.conf.lua")
      :format(dir, SECRET, Server.certhook))
    assert.are.equal(0, code3, err3)
    assert.falsy(err3:match("readable"), err3)
    fs.rm(dir)
  end)

  it("keeps every credential out of replies, logs and certhook events", function()
    local dir = fs.tmpdir()
    local _, pub = jwt.keypair(dir, "ibm")
    local token = "admin-token-hygiene-000000001"
    local srv = Server.start {
      config = ('sources = { cloudflare = { provider = "cloudflare", secret = { %q, "second-secret-xyz" } },\n' ..
        '  ibm = { provider = "ibm-cm", public_key = %q } }\nadmin_token = %q\nlog = { level = "debug" }\n')
        :format(SECRET, pub, token),
      handlers = { ["h.lua"] = 'return { ["*"] = function(e) require("certhook").log.info("seen", { id = e.id }) end }' },
    }
    local replies = {}
    local body = event()
    for _, secret in ipairs { SECRET, "second-secret-xyz", "attacker-guess-123456", SECRET .. "x" } do
      local r = srv:post("/hooks/cloudflare", body, { ["cf-webhook-auth"] = secret })
      replies[#replies + 1] = r.body
    end
    replies[#replies + 1] = srv:post("/hooks/ibm", jwt.body(jwt.hs256('{"a":1}', fs.read(pub)))).body
    replies[#replies + 1] = http.request(srv.admin, "GET", "/metrics", { Authorization = "Bearer wrong-" .. token }).body
    replies[#replies + 1] = http.request(srv.admin, "GET", "/readyz", { Authorization = "Bearer " .. token }).body
    local events = fs.run(("cd '%s' && %s events --config certhook.conf.lua"):format(srv.dir, Server.certhook))
    local events_json = fs.run(("cd '%s' && %s events --json --config certhook.conf.lua"):format(srv.dir, Server.certhook))
    assert.truthy(events:match("certificate%.validation%.failed"), events)
    local everything = table.concat(replies, "\n") .. events .. events_json
    for s in pairs(srv:secrets()) do
      assert.falsy(everything:find(s, 1, true), s)
    end
    assert(fs.wait_for(function() return srv:log_text():match('"message":"seen"') end, 5))
    srv:stop()
    srv:assert_no_secrets()
    srv:cleanup()
    fs.rm(dir)
  end)
end)
