-- Several servers, one PostgreSQL journal (DESIGN §9, §10): a real PostgreSQL (tests/helpers/
-- pg.lua, one cluster for the file) and real `certhook serve` processes on it. Dedup across
-- servers, the kill -9 of a server under load (every 202 runs, never on two servers while a
-- lease holds), a PostgreSQL restart and a read-only database under load (503, then
-- recovery, nothing lost), certhook.state from both, a stop that hands work over, and the
-- command line (events, replay, migrate) against the URI. Every load loop is bounded in count
-- and time.
local cjson = require "cjson"
local socket = require "socket"
local events = require "helpers.events"
local fs = require "helpers.fs"
local PG = require "helpers.pg"
local Server = require "helpers.server"
local Sink = require "helpers.sink"

local CF = { ["cf-webhook-auth"] = "s3cret" }
local SOURCES = 'sources = { cloudflare = { provider = "cloudflare", secret = "s3cret" } }\n'

-- Every run of a handler: "<node> <event id> <start> <end>" appended to $RUNS when it ends
-- (after a call to the sink that takes $DELAY ms, when $SINK is set).
local RECORDER = [[
  local certhook = require "certhook"
  local node, runs, sink, delay = os.getenv("NODE"), os.getenv("RUNS"), os.getenv("SINK"), os.getenv("DELAY")
  return { ["*"] = function(e)
    local t0 = certhook.time.now()
    if sink then assert(certhook.http.get(sink .. "/?delay=" .. (delay or "0"))) end
    if os.getenv("FAIL_ON") == node then error("this handler fails on " .. node) end
    local f = assert(io.open(runs, "a"))
    f:write(node, " ", e.id, " ", ("%.6f %.6f"):format(t0, certhook.time.now()), "\n")
    f:close()
  end }
]]

local function certhook(args)
  return fs.run(Server.certhook .. " " .. args)
end

-- The runs recorded in dir: { [event id] = { {node=, start=, stop=}, ... } }, and their count.
local function runs(dir)
  local by_id, n = {}, 0
  for _, node in ipairs { "a", "b" } do
    for line in (fs.read(dir .. "/runs-" .. node) or ""):gmatch("[^\n]+") do
      local who, id, t0, t1 = line:match("^(%S+) (%S+) (%S+) (%S+)$")
      assert(id, ("a line of %s/runs-%s is not a run: %q"):format(dir, node, line))
      by_id[id] = by_id[id] or {}
      table.insert(by_id[id], { node = who, start = tonumber(t0), stop = tonumber(t1) })
      n = n + 1
    end
  end
  return by_id, n
end

-- Waits until every id of `ids` ran (up to `seconds`); returns the runs.
local function wait_runs(dir, ids, seconds)
  local by_id
  fs.wait_for(function()
    by_id = runs(dir)
    for id in pairs(ids) do
      if not by_id[id] then return false end
    end
    return true
  end, seconds)
  return by_id
end

local function missing(ids, by_id)
  local out = {}
  for id in pairs(ids) do
    if not by_id[id] then out[#out + 1] = id end
  end
  return out
end

-- A POST that may fail (a server killed): the response, or nil.
local function post(srv, body)
  local ok, resp = pcall(srv.post, srv, "/hooks/cloudflare", body, CF)
  return ok and resp or nil
end

local function count(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

-- Load: POSTs a new event per request to the servers in turn, `conns` requests in flight at
-- once (non-blocking sockets, a connection per request), `max` requests or `seconds` at most.
-- before(i, seen) runs before the i-th request is made: it may return the servers to post to
-- from then on, or false to stop. Returns { [event id] = server } for every 202, and what came back:
-- { counts = { [status or "none"] = n }, order = { [i] = status }, no_retry_after = 503s
-- without Retry-After }.
local function load(servers, max, seconds, conns, before)
  local accepted, seen, flying, made = {}, { counts = {}, order = {}, no_retry_after = 0 }, {}, 0
  local deadline = socket.gettime() + seconds
  local function finish(c, q)
    c:close()
    flying[c] = nil
    local status = tonumber((q.got or ""):match("^HTTP/1%.1 (%d+)")) or "none"
    seen.counts[status] = (seen.counts[status] or 0) + 1
    seen.order[q.i] = status
    if status == 202 then accepted[q.id] = q.srv end
    if status == 503 and not q.got:lower():find("\r\nretry%-after: %d+") then
      seen.no_retry_after = seen.no_retry_after + 1
    end
  end
  while (made < max and socket.gettime() < deadline) or next(flying) do
    while made < max and socket.gettime() < deadline and count(flying) < conns do
      local next_servers = before(made + 1, seen)
      if next_servers == false then
        max = made
        break
      end
      made = made + 1
      servers = next_servers or servers
      local srv = servers[made % #servers + 1]
      local body, id = events.cloudflare()
      local c = socket.tcp()
      c:settimeout(0)
      local ok, err = c:connect("127.0.0.1", srv.port)
      local q = { i = made, id = id, srv = srv, sent = 0, got = "", req = ("POST /hooks/cloudflare HTTP/1.1\r\n" ..
        "Host: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\ncf-webhook-auth: s3cret\r\n" ..
        "Content-Length: %d\r\n\r\n%s"):format(#body, body) }
      flying[c] = q
      if not ok and err ~= "timeout" then finish(c, q) end
    end
    local reading, writing = {}, {}
    for c, q in pairs(flying) do
      if q.sent < #q.req then writing[#writing + 1] = c else reading[#reading + 1] = c end
    end
    local r, w = socket.select(reading, writing, 0.5)
    for _, c in ipairs(w) do
      local q = flying[c]
      local i, err, last = c:send(q.req, q.sent + 1)
      q.sent = i or last or q.sent
      if err and err ~= "timeout" then finish(c, q) end
    end
    for _, c in ipairs(r) do
      local q = flying[c]
      if q then
        local data, err, partial = c:receive(8192)
        q.got = q.got .. (data or partial or "")
        if err == "closed" or (err and err ~= "timeout") then finish(c, q) end
      end
    end
    if socket.gettime() > deadline + 10 then -- answers that never come: none
      for c, q in pairs(flying) do finish(c, q) end
    end
  end
  return accepted, seen
end

describe("a PostgreSQL journal", function()
  local pg, sink, dir
  setup(function()
    pg = PG.start()
    sink = Sink.start()
    dir = fs.tmpdir()
  end)
  teardown(function()
    if sink then sink:stop() end
    if pg then pg:cleanup() end
    if dir then fs.rm(dir) end
  end)

  -- Starts server `node` ("a", "b") on database db.
  local function node(name, db, opts)
    opts = opts or {}
    local env = { NODE = name, RUNS = dir .. "/" .. (opts.runs or db) .. "/runs-" .. name }
    for k, v in pairs(opts.env or {}) do env[k] = v end
    os.execute("mkdir -p '" .. dir .. "/" .. (opts.runs or db) .. "'")
    return Server.start {
      config = SOURCES .. ("data = %q\n"):format(pg:uri(db)) ..
        (opts.delivery or "delivery = { timeout = 1, lease = 2, backoff = 0.1, max_backoff = 0.5 }\n"),
      handlers = { [opts.file or "rec.lua"] = RECORDER },
      env = env,
    }
  end

  it("takes events at every server, dedups across them, and runs each once", function()
    local db = pg:createdb()
    local a, b = node("a", db), node("b", db)
    local ids, at = {}, {}
    for i = 1, 40 do
      local srv = i % 2 == 0 and a or b
      local body, id = events.cloudflare()
      local resp = srv:post("/hooks/cloudflare", body, CF)
      assert.are.equal(202, resp.status, resp.body)
      ids[id], at[id] = body, srv == a and "a" or "b"
    end
    -- the same events at the other server: duplicates, not run again
    local n = 0
    for id, body in pairs(ids) do
      n = n + 1
      if n > 10 then break end
      local resp = (at[id] == "a" and b or a):post("/hooks/cloudflare", body, CF)
      assert.are.equal(200, resp.status, resp.body)
      assert.is_true(resp.json.duplicate)
    end
    local by_id = wait_runs(dir .. "/" .. db, ids, 15)
    assert.are.same({}, missing(ids, by_id))
    socket.sleep(0.3) -- a second run would come now
    by_id = runs(dir .. "/" .. db)
    for id in pairs(ids) do
      assert.are.equal(1, #by_id[id], id .. " ran more than once")
      assert.are.equal(at[id], by_id[id][1].node, id .. " ran on the server that did not accept it")
    end
    assert.are.same({ { "40", "0" } },
      pg:sql(db, "SELECT count(*), count(*) FILTER (WHERE state <> 2) FROM certhook.events"))
    -- one certificate, folded by both servers in turn (each reads what the other wrote): every
    -- event counted once, in order
    assert.are.same({ { "40", "40" } },
      pg:sql(db, "SELECT repeats, (SELECT count(*) FROM certhook.contexts) FROM certhook.inventory"))
    a:cleanup()
    b:cleanup()
  end)

  it("folds the log in seq order: never past a seq a server has drawn and not yet committed", function()
    local db = pg:createdb()
    -- the handler records each event's context
    local handler = [[
      local certhook = require "certhook"
      return { ["certificate.*"] = function(e)
        local f = assert(io.open(os.getenv("RUNS"), "a"))
        f:write(certhook.json.encode { id = e.id, repeats = e.repeats, previous = e.previous or false }, "\n")
        f:close()
      end }
    ]]
    local function start(name, env)
      env.RUNS = dir .. "/" .. db .. "-" .. name
      return Server.start { config = SOURCES .. ("data = %q\n"):format(pg:uri(db)) ..
        "delivery = { timeout = 1, lease = 2 }\n", handlers = { ["ctx.lua"] = handler }, env = env }
    end
    local a = start("a", { CERTHOOK_TEST_HOLD_APPEND = "hold" })
    local b = start("b", {})
    local function seen(name, id)
      for l in (fs.read(dir .. "/" .. db .. "-" .. name) or ""):gmatch("[^\n]+") do
        local r = cjson.decode(l)
        if r.id == id then return r end
      end
    end
    -- a's event: its seq drawn, its commit held
    fs.write(a.dir .. "/hold", "")
    local x, x_id = events.cloudflare("validation.failed", { hostname = "order.example" })
    local c = socket.tcp()
    c:settimeout(5)
    assert(c:connect("127.0.0.1", a.port))
    assert(c:send(("POST /hooks/cloudflare HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: " ..
      "application/json\r\ncf-webhook-auth: s3cret\r\nContent-Length: %d\r\n\r\n%s"):format(#x, x)))
    assert(fs.wait_for(function()
      return #pg:sql(db, "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 AND " ..
        "classid::bigint >> 16 = 17224") > 0
    end, 5), "a's batch did not draw its seqs")
    -- b's event about the same certificate, a later seq, committed first
    local y, y_id = events.cloudflare("validation.failed", { hostname = "order.example" })
    assert.are.equal(202, b:post("/hooks/cloudflare", y, CF).status)
    socket.sleep(0.5)
    assert.is_nil(seen("b", y_id), "b's event was folded before a seq under it committed")
    os.remove(a.dir .. "/hold")
    c:settimeout(5)
    local line = c:receive("*l")
    assert.truthy(line and line:match("^HTTP/1%.1 202"), tostring(line))
    c:close()
    local rx = assert(fs.wait_for(function() return seen("a", x_id) end, 10), "a's event not run")
    local ry = assert(fs.wait_for(function() return seen("b", y_id) end, 10), "b's event not run")
    assert.are.equal(1, rx.repeats)
    assert.are.equal(false, rx.previous)
    assert.are.equal(2, ry.repeats) -- folded after a's, whose seq is lower
    assert.are.equal(x_id, ry.previous.last_event)
    a:cleanup()
    b:cleanup()
  end)

  it("keeps every increment of certhook.state.incr from two servers", function()
    local db = pg:createdb()
    local handler = [[
      local state = require("certhook").state
      return { ["*"] = function(e) for i = 1, 5 do assert(state.incr("hits")) end end }
    ]]
    local a = Server.start { config = SOURCES .. ("data = %q\n"):format(pg:uri(db)), handlers = { ["incr.lua"] = handler } }
    local b = Server.start { config = SOURCES .. ("data = %q\n"):format(pg:uri(db)), handlers = { ["incr.lua"] = handler } }
    for i = 1, 60 do
      local resp = (i % 2 == 0 and a or b):post("/hooks/cloudflare", events.cloudflare(), CF)
      assert.are.equal(202, resp.status, resp.body)
    end
    local value = fs.wait_for(function()
      local rows = pg:sql(db, "SELECT (SELECT count(*) FROM certhook.events WHERE state <> 2), " ..
        "convert_from(value, 'UTF8') FROM certhook.state WHERE key = 'hits'::bytea")
      return rows[1] and rows[1][1] == "0" and rows[1][2]
    end, 15)
    assert.are.equal("300", value)
    a:cleanup()
    b:cleanup()
  end)

  it("runs certhook.once's function once for two servers, and each watchdog event once", function()
    local db = pg:createdb()
    local DAY = 86400
    local config = SOURCES .. ("data = %q\n"):format(pg:uri(db)) ..
      "delivery = { timeout = 1, lease = 2, backoff = 0.05, max_backoff = 0.2 }\n" ..
      ("watchdog = { interval = 0.2, before = { %.10f } }\n"):format((3 * DAY + 60) / DAY)
    local handler = [[
      local certhook = require("certhook")
      local function note(what)
        local f = assert(io.open(os.getenv("OUT"), "a"))
        f:write(what, " ", os.getenv("NODE"), "\n")
        f:close()
      end
      return { ["certificate.*"] = function(e)
        if e.provider == "certhook" then return note(e.type .. ":" .. e.hostname) end
        certhook.once("page:" .. e.hostname, function() note("page:" .. e.hostname) return true end)
      end }]]
    local out = dir .. "/" .. db .. ".txt"
    local a = Server.start { config = config, handlers = { ["h.lua"] = handler }, env = { NODE = "a", OUT = out } }
    local b = Server.start { config = config, handlers = { ["h.lua"] = handler }, env = { NODE = "b", OUT = out } }
    local iso = function(t) return os.date("!%Y-%m-%dT%H:%M:%SZ", t) end
    for i = 1, 20 do -- one certificate, expiring in 3 days, at both servers
      local body = events.cloudflare("deployment.succeeded", { hostname = "shared.example",
        expires_on = iso(os.time() + 3 * DAY), created_at = iso(os.time()) })
      assert.are.equal(202, (i % 2 == 0 and a or b):post("/hooks/cloudflare", body, CF).status)
    end
    local function lines(prefix)
      local n = 0
      for l in (fs.read(out) or ""):gmatch("[^\n]+") do n = n + (l:find(prefix, 1, true) == 1 and 1 or 0) end
      return n
    end
    assert(fs.wait_for(function()
      return lines("certificate.expiration.upcoming:shared.example") > 0 and
        pg:sql(db, "SELECT count(*) FROM certhook.events WHERE state <> 2")[1][1] == "0"
    end, 20), "no watchdog event, or events left")
    socket.sleep(1) -- both watchdogs ran several times by now
    assert.are.equal(1, lines("page:shared.example"))
    assert.are.equal(1, lines("certificate.expiration.upcoming:shared.example"))
    assert.are.same({ { "1" } }, pg:sql(db, "SELECT count(*) FROM certhook.events WHERE provider = 'certhook'"))
    a:cleanup()
    b:cleanup()
  end)

  it("runs every 202 of a server killed under load, never on two servers while a lease holds", function()
    local db = pg:createdb()
    local env = { SINK = sink.url, DELAY = "50" }
    local a, b = node("a", db, { env = env }), node("b", db, { env = env })
    local killed_at
    local got = load({ a, b }, 600, 8, 16, function(i)
      if i == 250 then -- in the middle of it: a dies with requests and deliveries under way
        a:signal("KILL")
        killed_at = socket.gettime()
        return { b }
      end
    end)
    local accepted, by = {}, {}
    for id, srv in pairs(got) do accepted[id], by[id] = true, srv == a and "a" or "b" end
    assert.is_truthy(killed_at, "the load loop ended before the kill")
    assert.is_true(a:wait_exit(5) ~= nil)
    local by_id = wait_runs(dir .. "/" .. db, accepted, 25)
    assert.are.same({}, missing(accepted, by_id))
    local taken_over = 0
    for id in pairs(accepted) do
      local rs = by_id[id]
      if by[id] == "b" then -- b held it all along: once, on b
        assert.are.equal(1, #rs, id)
        assert.are.equal("b", rs[1].node, id)
      end
      for _, r in ipairs(rs) do
        if r.node ~= by[id] then
          taken_over = taken_over + 1
          -- b ran a's event only once a was dead (its lease ran out after that)
          assert.is_true(r.start >= killed_at, ("%s ran on b %.3f s before a died"):format(id, killed_at - r.start))
        end
      end
      for i = 1, #rs do -- no two runs of one delivery at once
        for k = i + 1, #rs do
          assert.is_true(rs[i].stop <= rs[k].start or rs[k].stop <= rs[i].start, id .. " ran twice at once")
        end
      end
    end
    assert.is_true(taken_over > 0, "b took none of a's events over")
    if os.getenv("CERTHOOK_KILL_STATS") then -- for reports: what the run did
      local twice = 0
      for id in pairs(accepted) do twice = twice + (#by_id[id] > 1 and 1 or 0) end
      fs.write(os.getenv("CERTHOOK_KILL_STATS"), ("accepted=%d taken_over=%d ran_twice=%d lost=0\n")
        :format(count(accepted), taken_over, twice))
    end
    local log = b:log_text()
    assert.truthy(log:find('"the lease of server %d+ %(.-%) ran out'), log)
    assert.are.same({ { "0" } }, pg:sql(db, "SELECT count(*) FROM certhook.events WHERE state <> 2"))
    a:cleanup()
    b:cleanup()
  end)

  it("answers 503 while PostgreSQL restarts under load, then 202 again, and loses nothing", function()
    local db = pg:createdb()
    local a, b = node("a", db), node("b", db)
    local stopped_at, restarted_at, first_after
    local got, seen = load({ a, b }, 1e6, 25, 8, function(i, so_far)
      if i == 200 then
        pg:stop_server("immediate") -- like a crash, requests and deliveries under way
        stopped_at = socket.gettime()
      elseif stopped_at and not restarted_at then
        if socket.gettime() - stopped_at > 2.5 then
          pg:start_server()
          restarted_at, first_after = socket.gettime(), i
        else
          socket.sleep(0.005) -- the 503s come at once: a provider's pace, not a flood
        end
      elseif first_after then
        local taken = 0 -- until 100 were taken after the restart
        for k = first_after, i - 1 do taken = taken + (so_far.order[k] == 202 and 1 or 0) end
        if taken >= 100 then return false end
        if so_far.order[i - 1] == 503 then socket.sleep(0.005) end
      end
    end)
    if not pg.running then pg:start_server() end -- for the tests that follow
    assert.is_truthy(restarted_at)
    assert.is_true((seen.counts[503] or 0) > 0, "no 503 while PostgreSQL was down")
    assert.are.equal(0, seen.no_retry_after)
    for status in pairs(seen.counts) do
      assert.is_true(status == 202 or status == 503, "got " .. tostring(status))
    end
    local after = 0 -- taken again once PostgreSQL is back
    for i, status in pairs(seen.order) do after = after + (i >= first_after and status == 202 and 1 or 0) end
    assert.is_true(after >= 100, after .. " taken after the restart")
    local accepted = {}
    for id in pairs(got) do accepted[id] = true end
    if os.getenv("CERTHOOK_RESTART_STATS") then -- for reports: what the run did
      fs.write(os.getenv("CERTHOOK_RESTART_STATS"), ("accepted=%d 503=%d down=%.1fs\n")
        :format(count(accepted), seen.counts[503] or 0, restarted_at - stopped_at))
    end
    local by_id = wait_runs(dir .. "/" .. db, accepted, 25)
    assert.are.same({}, missing(accepted, by_id))
    -- nothing half-done either: every journaled event is finished (one whose commit was lost
    -- with the connection included)
    assert.truthy(fs.wait_for(function()
      return pg:sql(db, "SELECT count(*) FROM certhook.events WHERE state <> 2")[1][1] == "0"
    end, 15), "events left unfinished")
    a:cleanup()
    b:cleanup()
  end)

  it("answers 503 while the database is read-only (a failover), then takes events again", function()
    local db = pg:createdb()
    local a = node("a", db)
    local function reconnect_all()
      pg:sql("postgres", ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '%s'"):format(db))
    end
    pg:sql("postgres", ("ALTER DATABASE %s SET default_transaction_read_only = on"):format(db))
    reconnect_all()
    local resp
    for _ = 1, 100 do -- the first may be refused for the connection cut off
      resp = a:post("/hooks/cloudflare", events.cloudflare(), CF)
      if resp.status == 503 and resp.body:find("read%-only") then break end
      socket.sleep(0.05)
    end
    assert.are.equal(503, resp.status, resp.body)
    assert.truthy(resp.headers["retry-after"])
    assert.truthy(resp.body:find("read%-only"), resp.body)
    pg:sql("postgres", ("ALTER DATABASE %s SET default_transaction_read_only = off"):format(db))
    reconnect_all()
    local body, id = events.cloudflare()
    local ok = fs.wait_for(function()
      return a:post("/hooks/cloudflare", body, CF).status == 202
    end, 15)
    assert.truthy(ok, "no 202 once the database took writes again")
    assert.truthy(next(wait_runs(dir .. "/" .. db, { [id] = true }, 10)))
    a:cleanup()
  end)

  it("hands a stopping server's work to the others at once, not after its lease", function()
    local db = pg:createdb()
    local delivery = "delivery = { timeout = 1, lease = 60, backoff = 0.2, max_backoff = 0.2 }\n"
    local env = { FAIL_ON = "a" } -- every attempt on a fails: its deliveries wait for a retry
    local a = node("a", db, { env = env, delivery = delivery })
    local b = node("b", db, { env = env, delivery = delivery })
    local ids = {}
    for _ = 1, 5 do
      local body, id = events.cloudflare()
      assert.are.equal(202, a:post("/hooks/cloudflare", body, CF).status)
      ids[id] = true
    end
    assert.truthy(fs.wait_for(function()
      return pg:sql(db, "SELECT count(*) FROM certhook.deliveries WHERE status = 'retrying'")[1][1] == "5"
    end, 10))
    local t0 = socket.gettime()
    assert.are.equal(0, a:stop())
    local by_id = wait_runs(dir .. "/" .. db, ids, 10)
    assert.are.same({}, missing(ids, by_id))
    assert.is_true(socket.gettime() - t0 < 10, "taken over only after the lease") -- lease: 60 s
    for id in pairs(ids) do assert.are.equal("b", by_id[id][1].node) end
    a:cleanup()
    b:cleanup()
  end)

  it("lists, replays and migrates journals with the URI", function()
    -- a journal in a data directory: one event done, one dead, a state key
    local old = Server.start {
      config = SOURCES .. "delivery = { max_attempts = 1 }\n",
      handlers = { ["h.lua"] = [[
        local certhook = require("certhook")
        local state = certhook.state
        return { ["*"] = function(e)
          state.set("seen:" .. e.id, true)
          certhook.once("once:" .. e.id, function() return e.hostname end)
          if e.hostname == "broken.example" then error("no ticket system") end
        end }]] },
    }
    local good, good_id = events.cloudflare(nil, { hostname = "fine.example" })
    local bad, bad_id = events.cloudflare(nil, { hostname = "broken.example" })
    assert.are.equal(202, old:post("/hooks/cloudflare", good, CF).status)
    assert.are.equal(202, old:post("/hooks/cloudflare", bad, CF).status)
    assert(old:wait_status(bad_id, "h.lua:*", "dead"))
    assert(old:wait_status(good_id, "h.lua:*", "done"))
    -- a replay asked through the console, journaled in replay_log (the server takes it: replays
    -- is empty again, the delivery dead again)
    local r = require("helpers.http").request(old.admin, "POST", "/api/events/" .. bad_id .. "/replay")
    assert.are.equal(202, r.status, r.body)
    assert(fs.wait_for(function() return #old:sql("SELECT id FROM replays") == 0 end, 10))
    assert(old:wait_status(bad_id, "h.lua:*", "dead"))
    local logged = old:sql("SELECT id, event_id, handler, dead, requested_at, requested_by FROM replay_log")
    assert.are.equal(1, #logged)
    assert.are.equal(0, old:stop())

    local db = pg:createdb()
    local uri = pg:uri(db)
    local out, err, code = certhook(("migrate --from '%s/data' --to '%s'"):format(old.dir, uri))
    assert.are.equal(0, code, err)
    assert.truthy(out:match("^copied 2 events, 2 deliveries, 2 state keys, 2 certhook.once keys, 2 certificates, " ..
      "0 replay requests and 1 journaled replay"), out)
    local copied = pg:sql(db, "SELECT id, event_id, handler, dead, requested_at, requested_by FROM certhook.replay_log")
    assert.are.equal(1, #copied)
    assert.is_true(math.abs(tonumber(copied[1][5]) - tonumber(logged[1][5])) < 1e-4, copied[1][5])
    copied[1][5] = nil
    assert.are.same({ logged[1][1], bad_id, "", "f", nil, "local" }, copied[1])
    out, err, code = certhook(("certs --data '%s' --json"):format(uri))
    assert.are.equal(0, code, err)
    local hosts = {}
    for line in out:gmatch("[^\n]+") do hosts[#hosts + 1] = cjson.decode(line).hostname end
    table.sort(hosts)
    assert.are.same({ "broken.example", "fine.example" }, hosts)
    out, err, code = certhook(("migrate --from '%s/data' --to '%s'"):format(old.dir, uri))
    assert.are.equal(1, code)
    assert.truthy(err:find("already holds events"), err)

    out, err, code = certhook(("events --data '%s' --status dead"):format(uri))
    assert.are.equal(0, code, err)
    assert.truthy(out:find(bad_id, 1, true), out)
    assert.falsy(out:find(good_id, 1, true), out)

    -- a server on the database replays the dead delivery, and an event on request
    local a = node("a", db, { file = "h.lua" }) -- the handler of the dead delivery, fixed
    out, err, code = certhook(("replay --dead --data '%s'"):format(uri))
    assert.are.equal(0, code, err)
    assert.truthy(out:find("queued a replay of 1 dead delivery"), out)
    out, err, code = certhook(("replay '%s' --handler 'h.lua:*' --data '%s'"):format(good_id, uri))
    assert.are.equal(0, code, err)
    assert.truthy(out:find("runs again  h.lua:*  (done, 1 attempt)", 1, true), out)
    local by_id = wait_runs(dir .. "/" .. db, { [good_id] = true, [bad_id] = true }, 10)
    assert.truthy(by_id[good_id] and by_id[bad_id])
    out, err, code = certhook(("events --data '%s' --json"):format(uri))
    assert.are.equal(0, code, err)
    local n = 0
    for line in out:gmatch("[^\n]+") do
      local e = require("cjson").decode(line)
      n = n + 1
      for _, dl in ipairs(e.deliveries) do
        assert.are.equal("done", dl.status, line)
      end
    end
    assert.are.equal(2, n)
    assert.are.same({ { "2" } }, pg:sql(db, "SELECT count(*) FROM certhook.state WHERE key LIKE 'seen:%'::bytea"))
    a:cleanup()
    old:cleanup()
  end)

  it("refuses a lease not longer than the timeout, and a database it cannot reach", function()
    local cfg = dir .. "/bad.conf.lua"
    fs.write(cfg, SOURCES .. ("data = %q\ndelivery = { timeout = 5, lease = 5 }\n"):format(pg:uri("postgres")))
    local _, err, code = certhook("serve --config " .. cfg)
    assert.are.equal(1, code)
    assert.truthy(err:find("delivery.lease (5 s) must be longer than delivery.timeout (5 s)", 1, true), err)
    fs.write(cfg, SOURCES .. ("data = %q\n"):format((pg:uri("postgres"):gsub("host=[^&]*", "host=/nonexistent"))))
    _, err, code = certhook("serve --config " .. cfg)
    assert.are.equal(1, code)
    assert.truthy(err:find("cannot connect to the journal database", 1, true), err)
  end)
end)
