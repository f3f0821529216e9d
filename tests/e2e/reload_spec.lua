-- Hot reload (DESIGN §9): edits are live at once (atomic renames, lib/ modules, a replaced
-- directory), a broken handler set changes nothing and says why, requests never fail during
-- reloads, a delivery finishes on the generation that started it, SIGHUP rereads the config.
local cjson = require "cjson"
local socket = require "socket"
local events = require "helpers.events"
local fs = require "helpers.fs"
local http = require "helpers.http"
local Server = require "helpers.server"
local Sink = require "helpers.sink"

local FIX = "tests/fixtures/"
local CF = { ["cf-webhook-auth"] = "s3cret" }
local SOURCES = 'sources = { cloudflare = { provider = "cloudflare", secret = "s3cret" } }\n'

-- A handler that appends "<tag> <event id>" to seen.log.
local function tagged(tag)
  return ([[
    return { ["*"] = function(e)
      local f = assert(io.open("seen.log", "a")) f:write(%q, " ", e.id, "\n") f:close()
    end }]]):format(tag)
end

-- Replaces a file the way editors and deploy tools do: write a temporary file, rename it.
local function atomic_write(path, content)
  local tmp = path:gsub("[^/]+$", ".%0.tmp")
  fs.write(tmp, content)
  assert(os.rename(tmp, path))
end

local function event()
  return events.cloudflare("deployment.succeeded")
end

local function seen(srv, id)
  for line in (fs.read(srv.dir .. "/seen.log") or ""):gmatch("[^\n]+") do
    local tag, eid = line:match("^(%S+) (%S+)$")
    if eid == id then return tag end
  end
end

local function handled_by(srv, id, seconds)
  return fs.wait_for(function() return seen(srv, id) end, seconds or 5)
end

local function post(srv)
  local body, id = event()
  local r = srv:post("/hooks/cloudflare", body, CF)
  assert.are.equal(202, r.status, r.body)
  return id
end

local function reload_cmd(srv)
  return fs.run(("%s reload --admin 127.0.0.1:%d"):format(Server.certhook, srv.admin))
end

describe("hot reload", function()
  local srv
  before_each(function()
    srv = Server.start { config = SOURCES, handlers = { ["h.lua"] = tagged("v1") } }
  end)
  after_each(function() srv:cleanup() end)

  it("makes an edit by atomic rename live within a second", function()
    assert.are.equal("v1", handled_by(srv, post(srv)))
    local t0 = socket.gettime()
    atomic_write(srv.dir .. "/handlers/h.lua", tagged("v2"))
    local live = fs.wait_for(function()
      local id = post(srv)
      return handled_by(srv, id, 1) == "v2"
    end, 3)
    local took = socket.gettime() - t0
    assert(live, "the edit never went live")
    assert.is_true(took < 1, ("the edit took %.2f s to go live"):format(took))
    local ready = http.get(srv.admin, "/readyz").json
    assert.are.equal(2, ready.generation)
    assert.are.equal(cjson.null, ready.last_reload_error)
  end)

  it("follows files added and deleted, as a git checkout does", function()
    atomic_write(srv.dir .. "/handlers/g.lua", tagged("added"))
    assert(fs.wait_for(function() return http.get(srv.admin, "/readyz").json.files == 2 end, 3))
    os.remove(srv.dir .. "/handlers/h.lua")
    assert(fs.wait_for(function() return http.get(srv.admin, "/readyz").json.files == 1 end, 3))
    assert.are.equal("added", handled_by(srv, post(srv)))
  end)

  it("reloads when a module in lib/ changes", function()
    fs.write(srv.dir .. "/handlers/lib/greeting.lua", 'return { word = "hello" }')
    atomic_write(srv.dir .. "/handlers/h.lua", [[
      local greeting = require "greeting"
      return { ["*"] = function(e)
        local f = assert(io.open("seen.log", "a")) f:write(greeting.word, " ", e.id, "\n") f:close()
      end }]])
    assert(fs.wait_for(function() return handled_by(srv, post(srv), 1) == "hello" end, 3))
    atomic_write(srv.dir .. "/handlers/lib/greeting.lua", 'return { word = "bonjour" }')
    assert(fs.wait_for(function() return handled_by(srv, post(srv), 1) == "bonjour" end, 3),
      "a change in lib/ did not reload")
  end)

  it("follows a handlers directory replaced by a symlink switch", function()
    fs.write(srv.dir .. "/releases/1/h.lua", tagged("release1"))
    fs.write(srv.dir .. "/releases/2/h.lua", tagged("release2"))
    -- serve from a symlink, as deploy tools lay it out
    assert.are.equal(0, srv:stop())
    fs.rm(srv.dir .. "/handlers")
    os.execute(("ln -s releases/1 '%s/handlers'"):format(srv.dir))
    srv:launch()
    assert.are.equal("release1", handled_by(srv, post(srv)))
    os.execute(("cd '%s' && ln -s releases/2 handlers.new && mv -T handlers.new handlers"):format(srv.dir))
    assert(fs.wait_for(function() return handled_by(srv, post(srv), 1) == "release2" end, 3),
      "the switched directory was not picked up")
  end)

  for _, case in ipairs {
    { "a syntax error", "return {\n  ['*'] = function(e)\n    if e then\n  end\n", "h.lua:5:" },
    { "an error raised while loading", "local cfg = nil\nreturn { ['*'] = cfg.handler }", "h.lua:2:" },
    { "a file returning something other than a table", "return 'not a table'", "h.lua: must return a table" },
  } do
    it("keeps the running handlers when the new set has " .. case[1] .. ", and says where", function()
      atomic_write(srv.dir .. "/handlers/h.lua", case[2])
      assert(fs.wait_for(function() return http.get(srv.admin, "/readyz").json.reload_failures >= 1 end, 3),
        "the failed reload was not counted")
      local ready = http.get(srv.admin, "/readyz").json
      assert.are.equal(1, ready.generation)
      assert.truthy(ready.last_reload_error:find(case[3], 1, true), ready.last_reload_error)
      assert.are.equal("v1", handled_by(srv, post(srv))) -- the old handlers still run
      local out, err, code = reload_cmd(srv)
      assert.are.equal(1, code, out)
      assert.truthy(err:find(case[3], 1, true), err)
      local metrics = http.get(srv.admin, "/metrics").body
      assert.truthy(metrics:match("certhook_reload_failures_total [1-9]"), metrics)
      assert.truthy(metrics:match("certhook_handler_generation 1\n"), metrics)
      local logged = false
      for _, l in ipairs(srv:logs()) do
        if l.message == "reload failed" and l.error:find(case[3], 1, true) then logged = true end
      end
      assert.is_true(logged, "the failed reload was not logged")
      atomic_write(srv.dir .. "/handlers/h.lua", tagged("fixed"))
      assert(fs.wait_for(function() return handled_by(srv, post(srv), 1) == "fixed" end, 3))
    end)
  end

  it("logs a failed reload in one line of one shape, whether a saved file or certhook reload asked", function()
    local function failures()
      local out = {}
      for _, l in ipairs(srv:logs()) do
        if l.message == "reload failed" then out[#out + 1] = l end
        assert.is_false(l.message == "request rejected" and l.status == 422, "a second line for the same failure")
      end
      return out
    end
    atomic_write(srv.dir .. "/handlers/h.lua", "return {")
    assert(fs.wait_for(function() return #failures() == 1 end, 3), "the failed reload was not logged")
    local _, _, code = reload_cmd(srv)
    assert.are.equal(1, code)
    local lines = failures()
    assert.are.equal(2, #lines)
    local function keys(l)
      local out = {}
      for k in pairs(l) do out[#out + 1] = k end
      table.sort(out)
      return table.concat(out, " ")
    end
    assert.are.equal(keys(lines[1]), keys(lines[2]))
    assert.are.same({ "a handler file changed", "POST /reload" }, { lines[1].by, lines[2].by })
    assert.are.equal(lines[1].error, lines[2].error)
  end)

  it("names every source a reloaded config is wrong about, not only the first", function()
    fs.write(srv.dir .. "/certhook.conf.lua", fs.read(srv.dir .. "/certhook.conf.lua") ..
      'sources.kv = { provider = "azure-keyvault", secret = os.getenv("CERTHOOK_TEST_UNSET_1") }\n' ..
      'sources.dc = { provider = "digicert", secret = os.getenv("CERTHOOK_TEST_UNSET_2") }\n')
    local _, err, code = reload_cmd(srv)
    assert.are.equal(1, code)
    assert.truthy(err:find("sources.kv has no credentials", 1, true), err)
    assert.truthy(err:find("sources.dc has no credentials", 1, true), err)
  end)

  it("certhook reload reports the new generation", function()
    local out, err, code = reload_cmd(srv)
    assert.are.equal(0, code, err)
    assert.truthy(out:match("reloaded: generation 2"))
  end)
end)

describe("reloads under load", function()
  it("fail no request and lose no event across 10 reloads", function()
    local srv = Server.start { config = SOURCES, handlers = { ["h.lua"] = tagged("v0") } }
    local body = fs.read(FIX .. "cloudflare/ssl.custom_hostname_certificate.issuance.succeeded.json")
    fs.write(srv.dir .. "/body.json", body)
    for k = 1, 3 do
      os.execute(([[cd '%s' && (unset LD_PRELOAD; for i in $(seq 1 2000); do [ -e stop ] && break; id=ld-%d-$i;
        sed "s/<<WEBHOOK_ID>/$id/" body.json > b.%d;
        code=$(curl -s -o /dev/null -w '%%{http_code}' --max-time 5 -H 'Content-Type: application/json' -H 'cf-webhook-auth: s3cret' --data-binary @b.%d http://127.0.0.1:%d/hooks/cloudflare);
        echo "cloudflare:$id $code" >> results.%d; done) >/dev/null 2>&1 &]]):format(srv.dir, k, k, k, srv.port, k))
    end
    for i = 1, 10 do
      socket.sleep(0.15)
      if i % 2 == 0 then
        atomic_write(srv.dir .. "/handlers/h.lua", tagged("v" .. i))
      else
        local _, err, code = reload_cmd(srv)
        assert.are.equal(0, code, err)
      end
    end
    -- the senders go on until enough requests were made (a loaded machine spawns curl slowly)
    local function made()
      local n = 0
      for k = 1, 3 do
        for _ in (fs.read(srv.dir .. "/results." .. k) or ""):gmatch("[^\n]+") do n = n + 1 end
      end
      return n
    end
    fs.wait_for(function() return made() > 120 end, 30)
    fs.write(srv.dir .. "/stop", "")
    socket.sleep(0.5)
    local ids, failed = {}, {}
    for k = 1, 3 do
      for line in (fs.read(srv.dir .. "/results." .. k) or ""):gmatch("[^\n]+") do
        local id, code = line:match("^(%S+) (%d+)$")
        if code == "202" then ids[#ids + 1] = id else failed[#failed + 1] = line end
      end
    end
    assert.are.same({}, failed)
    assert.is_true(#ids > 100, ("only %d requests were made"):format(#ids))
    local ready = http.get(srv.admin, "/readyz").json
    assert.is_true(ready.generation >= 7, "reloads did not happen: generation " .. ready.generation)
    assert.are.equal(0, ready.reload_failures)
    assert(fs.wait_for(function()
      for _, id in ipairs(ids) do if not seen(srv, id) then return false end end
      return true
    end, 10), "an accepted event was not handled")
    print(("# %d requests across %d reloads, none failed, all handled"):format(#ids, ready.reloads))
    srv:cleanup()
  end)
end)

describe("a delivery under way during a reload", function()
  it("finishes on the generation that started it", function()
    local sink = Sink.start()
    local waiting = ([[
      local http = require("certhook").http
      return { ["*"] = function(e)
        if e.hostname == "slow.example" then http.get(%q) end
        local f = assert(io.open("seen.log", "a")) f:write("old ", e.id, "\n") f:close()
      end }]]):format(sink.url .. "/?delay=1500")
    local srv = Server.start { config = SOURCES, handlers = { ["h.lua"] = waiting } }
    local body, slow = event()
    body = body:gsub('"hostname": "blog.com"', '"hostname": "slow.example"')
    assert.are.equal(202, srv:post("/hooks/cloudflare", body, CF).status)
    socket.sleep(0.3) -- it waits on the sink now
    atomic_write(srv.dir .. "/handlers/h.lua", tagged("new"))
    assert(fs.wait_for(function() return handled_by(srv, post(srv), 1) == "new" end, 3))
    assert.are.equal("old", handled_by(srv, slow, 5))
    local rows = srv:sql(("SELECT d.generation, d.status FROM %s d JOIN events e ON " ..
      "e.seq = d.event_seq WHERE e.id = '%s'"):format(srv:deliveries(), slow))
    assert.are.same({ "1", "done" }, rows[1])
    srv:cleanup()
    sink:stop()
  end)
end)

-- Regression (issue 21.4): a reload ran on the dispatcher's thread, so a file that loops while
-- loading held every delivery until delivery.timeout (30 s by default), and a `certhook reload`
-- right after queued a second wait. A new generation is built on a thread of its own, within
-- reload.timeout, and reload requests that arrive meanwhile are coalesced.
describe("a reload that loads a file that loops", function()
  it("never holds deliveries on the current generation, and requests meanwhile are coalesced", function()
    local srv = Server.start { config = SOURCES .. "reload = { timeout = 3 }\n", -- delivery.timeout: 30
                               handlers = { ["h.lua"] = tagged("v1") } }
    local t0 = socket.gettime()
    atomic_write(srv.dir .. "/handlers/loop.lua", "while true do end\n")
    socket.sleep(0.3) -- the file change is seen, a build starts
    os.execute(("(%s reload --admin 127.0.0.1:%d >%s/r1.out 2>&1 &)"):format(Server.certhook, srv.admin, srv.dir))
    os.execute(("(%s reload --admin 127.0.0.1:%d >%s/r2.out 2>&1 &)"):format(Server.certhook, srv.admin, srv.dir))
    local ids = {}
    for i = 1, 5 do
      local id = post(srv)
      local t1 = socket.gettime()
      assert.are.equal("v1", handled_by(srv, id, 2), "a delivery waited for the reload")
      assert.is_true(socket.gettime() - t1 < 1, "a delivery waited for the reload")
      ids[#ids + 1] = id
      socket.sleep(0.3)
    end
    -- the build from the file change fails at reload.timeout; the two requests share the next one
    assert(fs.wait_for(function()
      local r1, r2 = fs.read(srv.dir .. "/r1.out") or "", fs.read(srv.dir .. "/r2.out") or ""
      return r1:match("reload%.timeout") and r2:match("reload%.timeout")
    end, 10), "the reload requests were not answered")
    local failed = 0
    for _, l in ipairs(srv:logs()) do
      if l.message == "reload failed" then
        failed = failed + 1
        assert.truthy(l.error:match("loop%.lua: loading took longer than reload%.timeout %(3 s%)"), l.error)
      end
    end
    assert.are.equal(2, failed, "requests that came during a build were not coalesced: " .. srv:log_text())
    assert.is_true(socket.gettime() - t0 < 3 * 2 + 3)
    -- once the file is fixed, the next reload makes it live
    atomic_write(srv.dir .. "/handlers/loop.lua", "return {}\n")
    atomic_write(srv.dir .. "/handlers/h.lua", tagged("v2"))
    assert(fs.wait_for(function() return handled_by(srv, post(srv), 1) == "v2" end, 5))
    srv:cleanup()
  end)
end)

describe("SIGHUP", function()
  it("rereads the config without dropping a keep-alive connection", function()
    local srv = Server.start { config = SOURCES .. "limits = { max_body = 65536 }\n",
      handlers = { ["h.lua"] = tagged("v1") } }
    local c = socket.tcp()
    c:settimeout(5)
    assert(c:connect("127.0.0.1", srv.port))
    local function send(secret)
      local body = event()
      c:send(("POST /hooks/cloudflare HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" ..
        "cf-webhook-auth: %s\r\nContent-Length: %d\r\n\r\n%s"):format(secret, #body, body))
      local status = tonumber(assert(c:receive("*l")):match(" (%d+) "))
      local len
      repeat
        local h = assert(c:receive("*l"))
        len = len or tonumber(h:lower():match("^content%-length: (%d+)"))
      until h == ""
      c:receive(len)
      return status
    end
    assert.are.equal(202, send("s3cret"))
    local conf = srv.dir .. "/certhook.conf.lua"
    fs.write(conf, fs.read(conf):gsub('secret = "s3cret"', 'secret = { "n3w", "s3cret" }'))
    srv:signal("HUP")
    assert(fs.wait_for(function() return http.get(srv.admin, "/readyz").json.generation == 2 end, 3))
    assert.are.equal(202, send("n3w")) -- the same connection, the new secret
    assert.are.equal(202, send("s3cret"))
    fs.write(conf, fs.read(conf):gsub('{ "n3w", "s3cret" }', '"n3w"'))
    srv:signal("HUP")
    assert(fs.wait_for(function() return http.get(srv.admin, "/readyz").json.generation == 3 end, 3))
    assert.are.equal(401, send("s3cret")) -- removed
    c:close()
    assert.are.equal(401, srv:post("/hooks/cloudflare", (event()), CF).status)
    srv:cleanup()
  end)

  it("applies new limits and keeps the old config when the new one is broken", function()
    local srv = Server.start { config = SOURCES .. "limits = { max_body = 65536 }\n",
      handlers = { ["h.lua"] = tagged("v1") } }
    local conf = srv.dir .. "/certhook.conf.lua"
    local big = ("x"):rep(2000)
    local r = http.request(srv.port, "POST", "/hooks/cloudflare",
      { ["Content-Type"] = "application/json", ["cf-webhook-auth"] = "s3cret" }, big)
    assert.are.equal(400, r.status) -- within the limit (not JSON)
    fs.write(conf, fs.read(conf):gsub("max_body = 65536", "max_body = 1000"))
    local _, err, code = reload_cmd(srv)
    assert.are.equal(0, code, err)
    r = http.request(srv.port, "POST", "/hooks/cloudflare",
      { ["Content-Type"] = "application/json", ["cf-webhook-auth"] = "s3cret" }, big)
    assert.are.equal(413, r.status)
    fs.write(conf, fs.read(conf) .. "\nlimits = { max_body = 'lots' }\n")
    local out
    out, err, code = reload_cmd(srv)
    assert.are.equal(1, code, out)
    assert.truthy(err:match("limits%.max_body must be a number"), err)
    r = http.request(srv.port, "POST", "/hooks/cloudflare",
      { ["Content-Type"] = "application/json", ["cf-webhook-auth"] = "s3cret" }, big)
    assert.are.equal(413, r.status) -- the previous config still applies
    srv:cleanup()
  end)
end)
