-- End to end: `certhook serve` on ephemeral ports, real HTTP, real handlers. Every reply code
-- of DESIGN §7, both providers' authentication, dedup, what the handlers received, and that a
-- failing handler never stops the server.
local cjson = require "cjson"
local socket = require "socket"
local events = require "helpers.events"
local fs = require "helpers.fs"
local http = require "helpers.http"
local jwt = require "helpers.jwt"
local Server = require "helpers.server"

local FIX = "tests/fixtures/"
local CF = { ["cf-webhook-auth"] = "s3cret" }

-- Appends every event it gets (without raw) to received.jsonl in the server's directory.
local RECORDER = [[
local json = require("certhook").json
return {
  ["*"] = function(event)
    local copy = {}
    for k, v in pairs(event) do if k ~= "raw" then copy[k] = v end end
    copy.raw_keys = 0
    for _ in pairs(event.raw) do copy.raw_keys = copy.raw_keys + 1 end
    local f = assert(io.open("received.jsonl", "a"))
    f:write(json.encode(copy), "\n")
    f:close()
  end,
}
]]

local FAILING = [[
return {
  ["certificate.*.failed"] = function(event)
    error("cannot reach the ticket system for " .. tostring(event.hostname))
  end,
}
]]

local cf_event = events.cloudflare

describe("certhook serve", function()
  local srv, dir, priv, pub, other_priv

  local function received()
    local out = {}
    for line in (fs.read(srv.dir .. "/received.jsonl") or ""):gmatch("[^\n]+") do
      out[#out + 1] = cjson.decode(line)
    end
    return out
  end

  local function received_for(id, count)
    return fs.wait_for(function()
      local got = {}
      for _, e in ipairs(received()) do
        if e.id == id then got[#got + 1] = e end
      end
      if #got >= (count or 1) then return got end
    end, 5)
  end

  local function events_in_journal(id)
    return #srv:sql(("SELECT seq FROM events WHERE id = '%s'"):format(id))
  end

  setup(function()
    dir = fs.tmpdir()
    priv, pub = jwt.keypair(dir, "ibm")
    other_priv = jwt.keypair(dir, "other")
    srv = Server.start {
      dir = dir,
      config = ([[
sources = {
  cloudflare = { provider = "cloudflare", secret = "s3cret" },
  ibm = { provider = "ibm-cm", public_key = "%s" },
  ["ibm-dev"] = { provider = "ibm-cm", insecure = true },
}
limits = { max_body = 65536 }
]]):format(pub),
      handlers = { ["record.lua"] = RECORDER, ["zz-failing.lua"] = FAILING },
    }
  end)

  teardown(function()
    if srv then srv:cleanup() end
  end)

  describe("202 accepted", function()
    it("journals the event, replies with its id and type, and runs the handlers", function()
      local body, id = cf_event()
      local r = srv:post("/hooks/cloudflare", body, CF)
      assert.are.equal(202, r.status)
      assert.are.same({ id = id, type = "certificate.validation.failed" }, r.json)
      assert.are.equal("application/json", r.headers["content-type"])
      assert.are.equal(1, events_in_journal(id))
      local got = assert(received_for(id), "the handler did not receive " .. id)[1]
      assert.are.equal("cloudflare", got.source)
      assert.are.equal("cloudflare", got.provider)
      assert.are.equal("blog.com", got.hostname)
      assert.are.equal("ssl.custom_hostname_certificate.validation.failed", got.provider_type)
      assert.are.equal("dcv.digicert.com", got.validation.cname_target)
      assert.are.equal("number", type(got.received_at))
      assert.is_true(got.raw_keys > 0)
    end)

    it("accepts a body without Content-Type", function()
      local body, id = cf_event("issuance.succeeded")
      local r = srv:request("POST", "/hooks/cloudflare", { ["cf-webhook-auth"] = "s3cret" }, body)
      assert.are.equal(202, r.status)
      assert.are.equal(id, r.json.id)
    end)

    it("accepts the destination test message", function()
      local r = srv:post("/hooks/cloudflare", fs.read(FIX .. "cloudflare/test-message.json"), CF)
      assert.are.equal(202, r.status, r.body) -- posted once in this journal: not a duplicate
      assert.are.equal("notification.test", r.json.type)
    end)

    it("accepts an unknown type from an authenticated source as unknown", function()
      local body = fs.read(FIX .. "cloudflare/ssl.custom_hostname_certificate.unknown-type.json")
      local r = srv:post("/hooks/cloudflare", body, CF)
      assert.are.equal(202, r.status)
      assert.are.equal("unknown", r.json.type)
      local got = assert(received_for(r.json.id))[1]
      assert.are.equal("ssl.custom_hostname_certificate.something.new", got.provider_type)
    end)
  end)

  -- (issue 21.13: the tests above read the journal after the reply, which a build that
  -- answers before its commit passes too; here the commit is held, and no reply may come)
  it("answers 202 only once the commit is done: none while it is held", function()
    local held = Server.start {
      config = 'sources = { cloudflare = { provider = "cloudflare", secret = "s3cret" } }\n',
      env = { CERTHOOK_TEST_HOLD_COMMIT = "hold" }, -- relative to the server's directory
    }
    fs.write(held.dir .. "/hold", "")
    local body, id = cf_event()
    local c = socket.tcp()
    c:settimeout(5)
    assert(c:connect("127.0.0.1", held.port))
    assert(c:send(("POST /hooks/cloudflare HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: " ..
      "application/json\r\ncf-webhook-auth: s3cret\r\nContent-Length: %d\r\n\r\n%s"):format(#body, body)))
    c:settimeout(1.5)
    local line, err = c:receive("*l")
    assert.is_nil(line, "a reply came while the commit was held: " .. tostring(line))
    assert.are.equal("timeout", err)
    assert.are.equal(0, #held:sql(("SELECT 1 FROM events WHERE id = '%s'"):format(id)))
    local t0 = socket.gettime()
    os.remove(held.dir .. "/hold")
    c:settimeout(5)
    line = c:receive("*l")
    assert.truthy(line and line:match("^HTTP/1%.1 202"), tostring(line))
    assert.is_true(socket.gettime() - t0 < 2)
    assert.are.equal(1, #held:sql(("SELECT 1 FROM events WHERE id = '%s'"):format(id)))
    c:close()
    held:cleanup()
  end)

  describe("200 duplicate", function()
    it("answers a repeat with duplicate=true and does not dispatch it again", function()
      local body, id = cf_event("deployment.succeeded")
      assert.are.equal(202, srv:post("/hooks/cloudflare", body, CF).status)
      local r = srv:post("/hooks/cloudflare", body, CF)
      assert.are.equal(200, r.status)
      assert.are.same({ id = id, duplicate = true }, r.json)
      assert(received_for(id))
      socket.sleep(0.3)
      assert.are.equal(1, #received_for(id))
      assert.are.equal(1, events_in_journal(id))
    end)

    -- (duplicates are found in an id set the server keeps in memory: read back at each start)
    it("answers a repeat as a duplicate after a restart too, and does not dispatch it again", function()
      local body, id = cf_event("deployment.succeeded")
      assert.are.equal(202, srv:post("/hooks/cloudflare", body, CF).status)
      assert(received_for(id))
      assert.are.equal(0, srv:stop())
      srv:launch()
      local r = srv:post("/hooks/cloudflare", body, CF)
      assert.are.equal(200, r.status, r.body)
      assert.are.same({ id = id, duplicate = true }, r.json)
      socket.sleep(0.3)
      assert.are.equal(1, #received_for(id))
      assert.are.equal(1, events_in_journal(id))
    end)
  end)

  describe("401 unauthorized", function()
    it("refuses a missing or wrong cf-webhook-auth without saying anything about the secret", function()
      local body, id = cf_event()
      for _, headers in ipairs { {}, { ["cf-webhook-auth"] = "wrong" }, { ["cf-webhook-auth"] = "s3cre" },
                                 { ["cf-webhook-auth"] = "s3cret2" } } do
        local r = srv:post("/hooks/cloudflare", body, headers)
        assert.are.equal(401, r.status)
        assert.are.equal("unauthorized", r.json.error)
        assert.is_nil(r.body:find("s3cret", 1, true))
      end
      assert.are.equal(0, events_in_journal(id))
    end)
  end)

  describe("IBM Certificate Manager", function()
    local claims = fs.read(FIX .. "ibm-cm/v4.cert_issued.json")

    it("accepts an RS256 JWT signed with the instance key", function()
      local body = jwt.body(jwt.rs256(claims, priv))
      local r = srv:post("/hooks/ibm", body, {})
      assert.are.equal(202, r.status)
      assert.are.equal("certificate.issuance.succeeded", r.json.type)
      local hex = fs.run("printf '%s' '" .. body .. "' | sha256sum"):match("^(%x+)")
      assert.are.equal("ibm:sha256:" .. hex, r.json.id) -- IBM ids: the hash of the raw body
      local got = assert(received_for(r.json.id))[1]
      assert.are.equal("ibm", got.source)
      assert.are.equal("ibm-cm", got.provider)
      assert.are.equal(4, got.payload_version)
      assert.are.equal("example.com", got.hostname)
      assert.are.equal(200, srv:post("/hooks/ibm", body, {}).status) -- the same body again
    end)

    it("journals the event with the verified claims as raw, and the body as received", function()
      local body = jwt.body(jwt.rs256(fs.read(FIX .. "ibm-cm/v4.cert_renewed.json"), priv))
      local r = srv:post("/hooks/ibm", body, {})
      assert.are.equal(202, r.status)
      local rows = srv:sql(("SELECT type, CASE WHEN body LIKE '%%eyJ%%' AND length(body) = %d THEN 1 END, " ..
        "CASE WHEN length(event) > 0 THEN 1 END FROM events JOIN event_data USING (seq) WHERE id = '%s'")
        :format(#body, r.json.id))
      assert.are.same({ "certificate.renewal.succeeded", "1", "1" }, rows[1])
    end)

    local function refused(body, pattern)
      local r = srv:post("/hooks/ibm", body, {})
      assert.are.equal(401, r.status, r.body)
      assert.are.equal("unauthorized", r.json.error)
      if pattern then assert.truthy(r.json.message:match(pattern), r.json.message) end
    end

    it("refuses a token signed with another key", function()
      refused(jwt.body(jwt.rs256(claims, other_priv)), "does not verify")
    end)

    it("refuses a tampered payload", function()
      local token = jwt.rs256(claims, priv)
      local h, _, s = token:match("^([^.]+)%.([^.]+)%.([^.]+)$")
      local forged = claims:gsub("cert_issued", "cert_order_failed")
      refused(jwt.body(h .. "." .. jwt.b64url(forged) .. "." .. s), "does not verify")
    end)

    it("refuses alg none", function()
      refused(jwt.body(jwt.none(claims)), "only RS256")
    end)

    it("refuses HS256, even keyed with the public key (algorithm confusion)", function()
      refused(jwt.body(jwt.hs256(claims, fs.read(pub))), "only RS256")
    end)

    it("refuses an RS256 header with another alg spelled in", function()
      refused(jwt.body(jwt.rs256(claims, priv, '{"alg":"RS512"}')), "only RS256")
    end)

    it("refuses a bare, unsigned payload", function()
      refused(claims, "signed")
    end)

    it("refuses the real published IBM tokens (signed by a key we do not have)", function()
      refused(fs.read(FIX .. "ibm-cm/jwt.real.test_notification_channel.json"), "does not verify")
    end)

    it("accepts a bare payload on a source marked insecure", function()
      local body = fs.read(FIX .. "ibm-cm/v4.cert_domain_validation_required.json")
      local r = srv:post("/hooks/ibm-dev", body, {})
      assert.are.equal(202, r.status)
      assert.are.equal("certificate.validation.required", r.json.type)
      local got = assert(received_for(r.json.id))[1]
      assert.are.equal("_acme-challenge.example.com", got.validation.txt_name)
    end)
  end)

  describe("404 not found", function()
    it("for an unknown source and for any other path", function()
      for _, path in ipairs { "/hooks/nope", "/hooks/", "/", "/hooks/cloudflare/x", "/healthz" } do
        local r = srv:post(path, "{}", CF)
        assert.are.equal(404, r.status, path)
        assert.are.equal("not_found", r.json.error)
      end
    end)
  end)

  describe("405 method not allowed", function()
    it("for anything but POST, with Allow: POST", function()
      for _, m in ipairs { "GET", "PUT", "DELETE" } do
        local r = srv:request(m, "/hooks/cloudflare", CF)
        assert.are.equal(405, r.status, m)
        assert.are.equal("POST", r.headers["allow"])
        assert.are.equal("method_not_allowed", r.json.error)
      end
    end)
  end)

  describe("413 payload too large", function()
    it("is answered from the headers, before any of the body is sent", function()
      local r = http.request(srv.port, "POST", "/hooks/cloudflare",
        { ["Content-Type"] = "application/json", ["cf-webhook-auth"] = "s3cret", ["Content-Length"] = "10000000" },
        ("x"):rep(10), { send_body = false, timeout = 5 })
      assert.are.equal(413, r.status)
      assert.are.equal("payload_too_large", r.json.error)
      assert.truthy(r.json.message:match("65536"))
    end)

    it("stops a chunked body at the limit", function()
      local chunk = ("x"):rep(40000)
      local body = ("%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n"):format(#chunk, chunk, #chunk, chunk)
      local c = socket.tcp()
      c:settimeout(5)
      assert(c:connect("127.0.0.1", srv.port))
      c:send("POST /hooks/cloudflare HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" ..
        "cf-webhook-auth: s3cret\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" .. body)
      local status = c:receive("*l")
      c:close()
      assert.truthy(status:match(" 413 "), status)
    end)
  end)

  describe("415 unsupported media type", function()
    it("for a body declared as something other than JSON", function()
      local body = cf_event()
      for _, ct in ipairs { "text/plain", "application/x-www-form-urlencoded", "application/xml" } do
        local r = srv:request("POST", "/hooks/cloudflare", { ["Content-Type"] = ct, ["cf-webhook-auth"] = "s3cret" }, body)
        assert.are.equal(415, r.status, ct)
        assert.are.equal("unsupported_media_type", r.json.error)
        assert.truthy(r.json.message:find(ct, 1, true))
      end
    end)

    it("but not for JSON with parameters or a +json type", function()
      for _, ct in ipairs { "application/json; charset=utf-8", "Application/JSON", "application/vnd.cloudflare+json" } do
        local body = cf_event()
        local r = srv:request("POST", "/hooks/cloudflare", { ["Content-Type"] = ct, ["cf-webhook-auth"] = "s3cret" }, body)
        assert.are.equal(202, r.status, ct)
      end
    end)
  end)

  describe("400 bad request", function()
    it("for invalid JSON, saying where", function()
      local r = srv:post("/hooks/cloudflare", '{"metadata": {"event": ', CF)
      assert.are.equal(400, r.status)
      assert.are.equal("bad_request", r.json.error)
      assert.truthy(r.json.message:match("^invalid JSON: .*character %d+"), r.json.message)
    end)

    it("for JSON that is no payload of the source's provider", function()
      local r = srv:post("/hooks/cloudflare", '{"hello": "world"}', CF)
      assert.are.equal(400, r.status)
      assert.truthy(r.json.message:match("not a recognizable Cloudflare payload"), r.json.message)
      r = srv:post("/hooks/ibm-dev", '{"instance_crn": "crn:x"}', {})
      assert.are.equal(400, r.status)
      assert.truthy(r.json.message:match("event_type"), r.json.message)
    end)
  end)

  describe("a failing handler", function()
    it("is logged with its traceback, recorded, and the server keeps serving", function()
      local body, id = cf_event("renewal.failed")
      assert.are.equal(202, srv:post("/hooks/cloudflare", body, CF).status)
      local line = fs.wait_for(function()
        for _, l in ipairs(srv:logs()) do
          if l.message == "handler failed" and l.event == id then return l end
        end
      end, 5)
      assert(line, "no 'handler failed' log line")
      assert.are.equal("zz-failing.lua:certificate.*.failed", line.handler)
      assert.truthy(line.error:match("zz%-failing%.lua:3: cannot reach the ticket system for blog.com"), line.error)
      assert.truthy(line.traceback:match("stack traceback"))
      assert(received_for(id)) -- the other handler of the same event ran
      local rows = fs.wait_for(function()
        local r = srv:sql(("SELECT d.handler, d.status, d.last_error FROM %s d JOIN events e ON e.seq = d.event_seq WHERE e.id = '%s' ORDER BY d.handler"):format(srv:deliveries(), id))
        return #r == 2 and r
      end, 5)
      assert(rows, "deliveries not recorded")
      assert.are.same({ "record.lua:*", "done", "" }, rows[1])
      assert.are.equal("retrying", rows[2][2]) -- delivery.max_attempts is 10 by default
      local next_body = cf_event()
      assert.are.equal(202, srv:post("/hooks/cloudflare", next_body, CF).status)
    end)
  end)

  describe("admin listener", function()
    it("answers /healthz and /readyz", function()
      local h = http.get(srv.admin, "/healthz")
      assert.are.equal(200, h.status)
      assert.are.equal("ok", h.json.status)
      local r = http.get(srv.admin, "/readyz")
      assert.are.equal(200, r.status)
      assert.are.equal("ready", r.json.status)
      assert.are.equal("ok", r.json.journal)
      assert.are.equal(2, r.json.handlers)
      assert.are.equal(1, r.json.generation)
      assert.are.equal(404, http.get(srv.admin, "/hooks/cloudflare").status)
      assert.are.equal(405, http.request(srv.admin, "POST", "/healthz", {}, "").status)
    end)
  end)

  describe("503 journal unavailable", function()
    -- (an SQLite lock; postgres_spec has a read-only database and a PostgreSQL restart)
    it("answers 503 with Retry-After and stores nothing while the journal cannot be written #sqlite", function()
      -- another process holds the write lock longer than journal.busy_timeout (0.3 s)
      local lock = io.popen(("sqlite3 '%s/data/certhook.db' >/dev/null 2>&1"):format(srv.dir), "w")
      finally(function() -- the sqlite3 shell must quit: it holds its own stdin open
        lock:write("ROLLBACK;\n.quit\n")
        lock:close()
      end)
      -- (.timeout: certhook may be committing just then, and BEGIN would fail at once)
      lock:write((".timeout 5000\nBEGIN IMMEDIATE;\n.shell touch '%s/locked'\n"):format(srv.dir))
      lock:flush()
      assert(fs.wait_for(function() return fs.read(srv.dir .. "/locked") end, 5), "sqlite3 took no lock")
      local body, id = cf_event()
      local r = srv:post("/hooks/cloudflare", body, CF)
      assert.are.equal(503, r.status)
      assert.are.equal("unavailable", r.json.error)
      assert.truthy(tonumber(r.headers["retry-after"]))
      assert.truthy(r.json.message:match("locked"), r.json.message)
      local ready = http.get(srv.admin, "/readyz")
      assert.are.equal(503, ready.status)
      lock:write("ROLLBACK;\n")
      lock:flush()
      assert(fs.wait_for(function() return srv:post("/hooks/cloudflare", "{}", CF).status ~= 503 end, 5))
      assert.are.equal(0, events_in_journal(id))
      assert.are.equal(202, srv:post("/hooks/cloudflare", body, CF).status) -- nothing half-written
      assert.are.equal(200, http.get(srv.admin, "/readyz").status)
      assert(received_for(id))
    end)
  end)

  describe("restarts", function()
    -- (after the kill on PostgreSQL, the killed node's events are another's once its delivery.lease
    -- runs out, 120 s: postgres_spec kills a server with short leases)
    it("stops cleanly on SIGTERM and dispatches, at the next start, what it had accepted #sqlite", function()
      -- a handler that blocks the dispatcher, so accepted events wait in the queue
      fs.write(srv.dir .. "/handlers/record.lua", RECORDER:gsub('%["%*"%] = function%(event%)',
        '["*"] = function(event)\n    if event.hostname == "slow.example" then local t = os.clock() + 1 while os.clock() < t do end end'))
      assert.are.equal(0, srv:stop())
      srv:launch()
      local slow = cf_event():gsub('"hostname": "blog.com"', '"hostname": "slow.example"')
      assert.are.equal(202, srv:post("/hooks/cloudflare", slow, CF).status)
      local ids = {}
      for i = 1, 5 do
        local body, id = cf_event("issuance.succeeded")
        assert.are.equal(202, srv:post("/hooks/cloudflare", body, CF).status)
        ids[i] = id
      end
      srv:signal("KILL") -- a crash while the dispatcher is busy
      srv:wait_exit(5)
      local before = #received()
      srv:launch()
      for _, id in ipairs(ids) do assert(received_for(id), "event " .. id .. " was lost") end
      assert.is_true(#received() > before)
      assert.truthy(srv:log_text():match("dispatching events accepted before the restart"))
      assert.are.equal(0, srv:stop())
      local last = srv:logs()
      assert.are.equal("stopped", last[#last].message)
    end)
  end)
end)

describe("the event handlers receive", function()
  it("is what certhook normalize prints, raw included, for every handler that matches", function()
    local dump = [[
      local json = require("certhook").json
      return { ["*"] = function(e)
        local _ = e.raw.metadata -- read first: raw is decoded on first use
        local f = assert(io.open(%q, "w")) f:write(json.encode(e)) f:close()
      end }]]
    local srv = Server.start {
      config = 'sources = { cloudflare = { provider = "cloudflare", secret = "s3cret" } }\n',
      handlers = { ["a.lua"] = dump:format("a.json"), ["b.lua"] = dump:format("b.json") },
    }
    local body = cf_event()
    assert.are.equal(202, srv:post("/hooks/cloudflare", body, CF).status)
    local file = srv.dir .. "/payload.json"
    fs.write(file, body)
    local printed = fs.run(("%s normalize '%s'"):format(Server.certhook, file))
    for _, name in ipairs { "a.json", "b.json" } do
      local want = cjson.decode(printed)
      local text = assert(fs.wait_for(function() return fs.read(srv.dir .. "/" .. name) end, 5), name)
      local got = cjson.decode(text)
      assert.is_true(math.abs(got.received_at - os.time()) < 60)
      got.received_at, want.received_at = nil, nil
      assert.is_true(math.abs(got.occurred_at - want.occurred_at) < 0.001) -- json.encode: 14 digits
      got.occurred_at, want.occurred_at = nil, nil
      got.source = nil -- normalize does not know the source
      want.source = nil
      assert.are.same(want, got)
    end
    srv:cleanup()
  end)

  it("is a copy of its own: what one handler changes, the others never see", function()
    local writer = [[return { ["*"] = function(e)
      e.hostname = "changed"; e.certificate.id = "changed"; e.raw.data = nil
    end }]]
    local reader = [[return { ["*"] = function(e)
      local f = assert(io.open(%q, "w"))
      f:write(e.hostname, " ", e.certificate.id, " ", tostring(e.raw.data ~= nil), " ",
        tostring(e.certificates[1] == e.certificate))
      f:close()
    end }]]
    local srv = Server.start {
      config = 'sources = { cloudflare = { provider = "cloudflare", secret = "s3cret" } }\n',
      -- deliveries start in file order; the last one gets the original, the others copies
      handlers = { ["1.lua"] = writer, ["2.lua"] = reader:format("2.txt"),
                   ["3.lua"] = writer, ["4.lua"] = reader:format("4.txt") },
    }
    assert.are.equal(202, srv:post("/hooks/cloudflare", (cf_event()), CF).status)
    for _, name in ipairs { "2.txt", "4.txt" } do
      local text = fs.wait_for(function() -- written once opened: wait for the text too
        local t = fs.read(srv.dir .. "/" .. name)
        return t ~= "" and t
      end, 5)
      assert.are.equal("blog.com cert-blog.com true true", text)
    end
    srv:cleanup()
  end)
end)

describe("the command line finds the server of its config (issue 21: another certhook answered)", function()
  it("sends and reloads where serve --listen/--admin listens, not at the config's addresses", function()
    -- another certhook where the config says to listen
    local other = Server.start { config = 'sources = { cloudflare = { provider = "cloudflare", secret = "s3cret" } }\n' }
    local srv = Server.start { config = 'sources = { cloudflare = { provider = "cloudflare", secret = "s3cret" } }\n',
      handlers = { ["r.lua"] = RECORDER } }
    assert.are.equal(0, srv:stop())
    local conf = srv.dir .. "/certhook.conf.lua"
    fs.write(conf, (fs.read(conf):gsub('listen = "127.0.0.1:0"', ('listen = "127.0.0.1:%d"'):format(other.port))
      :gsub('admin = "127.0.0.1:0"', ('admin = "127.0.0.1:%d"'):format(other.admin))))
    srv.extra_args = "--listen 127.0.0.1:0 --admin 127.0.0.1:0"
    srv:launch()
    local certhook = Server.certhook .. " %s --config '" .. conf .. "'"

    local out, err, code = fs.run(certhook:format("send --sample notification.test --provider cloudflare"))
    assert.are.equal(0, code, err)
    assert.truthy(err:find(("POST http://127.0.0.1:%d/hooks/cloudflare (the server of "):format(srv.port), 1, true), err)
    local id = cjson.decode(out:match("^202 (.*)$")).id
    assert.are.same({ { "1" } }, srv:sql(("SELECT count(*) FROM events WHERE id = '%s'"):format(id)))
    assert.are.same({ { "0" } }, other:sql(("SELECT count(*) FROM events WHERE id = '%s'"):format(id)))

    out, err, code = fs.run(certhook:format("reload"))
    assert.are.equal(0, code, err)
    assert.truthy(out:find(("reloaded: generation 2 (http://127.0.0.1:%d/reload, the server of "):format(srv.admin), 1, true), out)
    local function reloaded(s)
      for _, l in ipairs(s:logs()) do if l.message == "reloaded" then return true end end
      return false
    end
    assert.is_true(reloaded(srv))
    assert.is_false(reloaded(other))

    -- killed: its record says where it was, its process is gone, and the command line says so
    srv:signal("KILL")
    assert(srv:wait_exit(10))
    local _, err2 = fs.run(certhook:format("send --sample notification.test --provider cloudflare"))
    assert.truthy(err2:find(("note: the server that listened at http://127%%.0%%.0%%.1:%d for .* %%(pid %d%%) is gone"):format(srv.port, srv.pid)), err2)
    assert.truthy(err2:find(("POST http://127.0.0.1:%d/hooks/cloudflare (the config's listen; "):format(other.port), 1, true), err2)
    srv:cleanup()
    other:cleanup()
  end)
end)
