-- Delivery guarantees (DESIGN §9): retries with backoff, one delivery per handler, dead
-- letters listed and replayed, crash safety under load, graceful stop, state across
-- restarts, and 503 when the journal cannot be written (read-only file, full disk).
local cjson = require "cjson"
local socket = require "socket"
local events = require "helpers.events"
local fs = require "helpers.fs"
local Server = require "helpers.server"

local FIX = "tests/fixtures/"
local CF = { ["cf-webhook-auth"] = "s3cret" }
local SOURCES = 'sources = { cloudflare = { provider = "cloudflare", secret = "s3cret" } }\n'

local function cf_event(kind, hostname)
  return events.cloudflare(kind, { hostname = hostname })
end

-- Appends "<tag> <event id>" to calls.log in the server directory for every call.
local function recorder(tag)
  return ([[
    return { ["*"] = function(e)
      local f = assert(io.open("calls.log", "a")) f:write(%q, " ", e.id, "\n") f:close()
    end }]]):format(tag)
end

-- Fails until the file "fixed" exists in the server directory (or until `times` failures).
local function flaky(tag, times)
  return ([[
    local state = require("certhook").state
    return { ["*"] = function(e)
      local n = state.incr(%q .. ":" .. e.id)
      local f = assert(io.open("calls.log", "a")) f:write(%q, " ", e.id, " ", n, "\n") f:close()
      if io.open("fixed") == nil and n <= %d then error("attempt " .. n .. " fails") end
    end }]]):format(tag, tag, times)
end

local function calls(srv, tag, id)
  local count = 0
  for line in (fs.read(srv.dir .. "/calls.log") or ""):gmatch("[^\n]+") do
    local t, i = line:match("^(%S+) (%S+)")
    if t == tag and i == id then count = count + 1 end
  end
  return count
end

local function certhook(args)
  return fs.run(Server.certhook .. " " .. args)
end

describe("deliveries", function()
  local srv
  setup(function()
    srv = Server.start {
      config = SOURCES .. "delivery = { max_attempts = 4, backoff = 0.05, max_backoff = 0.2 }\n",
      handlers = {
        ["a-steady.lua"] = recorder("steady"),
        ["b-flaky.lua"] = flaky("flaky", 2),
        ["c-broken.lua"] = [[
          return { ["certificate.deployment.*"] = function(e)
            local f = assert(io.open("calls.log", "a")) f:write("broken ", e.id, "\n") f:close()
            if io.open("fixed") == nil then error("the ticket system is down") end
          end }]],
      },
    }
  end)
  teardown(function() srv:cleanup() end)

  it("retries a failing handler until it succeeds, and only that handler", function()
    local body, id = cf_event("validation.succeeded")
    assert.are.equal(202, srv:post("/hooks/cloudflare", body, CF).status)
    local row = assert(srv:wait_status(id, "b-flaky.lua:*", "done"), "the flaky handler never succeeded")
    assert.are.equal("3", row[2]) -- failed twice, then succeeded
    assert.are.equal("", row[3]) -- it succeeded: no error of an earlier attempt left as if current
    assert.are.equal("2", row[4]) -- the event is finished
    assert.are.equal(3, calls(srv, "flaky", id))
    assert.are.equal(1, calls(srv, "steady", id)) -- the steady handler is never re-run
    assert.are.same({ "done", "1", "", "2" }, srv:delivery(id, "a-steady.lua:*"))
  end)

  it("logs each failed attempt with its number and when the next one comes", function()
    local body, id = cf_event("issuance.succeeded")
    assert.are.equal(202, srv:post("/hooks/cloudflare", body, CF).status)
    assert(srv:wait_status(id, "b-flaky.lua:*", "done"))
    local attempts = {}
    for _, l in ipairs(srv:logs()) do
      if l.message == "handler failed" and l.event == id then
        attempts[#attempts + 1] = l.attempt
        assert.is_number(l.retry_in)
        assert.is_true(l.retry_in > 0 and l.retry_in <= 0.2, tostring(l.retry_in)) -- max_backoff
        assert.truthy(tostring(l.next_attempt_at):match("^%d+%-%d+%-%d+T[%d:.]+Z$"), tostring(l.next_attempt_at))
        assert.is_nil(l.dead)
      end
      assert.is_false(l.message:match("^delivery dead") ~= nil and l.event == id, "a retried delivery is not dead")
    end
    assert.are.same({ 1, 2 }, attempts)
  end)

  it("marks a delivery dead after max_attempts, lists it, and replays it", function()
    local body, id = cf_event("deployment.failed")
    assert.are.equal(202, srv:post("/hooks/cloudflare", body, CF).status)
    local row = assert(srv:wait_status(id, "c-broken.lua:certificate.deployment.*", "dead"))
    assert.are.equal("4", row[2])
    assert.truthy(row[3]:match("the ticket system is down"))
    assert.are.equal(4, calls(srv, "broken", id))
    -- the last failure says it was the last, and one line says the delivery is dead
    local last, dead
    for _, l in ipairs(srv:logs()) do
      if l.message == "handler failed" and l.event == id then last = l end
      if l.message:match("^delivery dead") and l.event == id then dead = l end
    end
    assert.are.equal(4, last.attempt)
    assert.is_true(last.dead)
    assert.is_nil(last.retry_in)
    assert(dead, "no line says the delivery went dead")
    assert.are.equal("c-broken.lua:certificate.deployment.*", dead.handler)
    assert.are.equal(4, dead.attempts)
    assert.truthy(dead.error:match("the ticket system is down"))
    assert.truthy(dead.message:match("certhook replay"))

    local conf = " --config " .. srv.dir .. "/certhook.conf.lua"
    local out, err, code = certhook("events --status dead" .. conf)
    assert.are.equal(0, code, err)
    assert.truthy(out:find(id, 1, true))
    assert.truthy(out:match("c%-broken%.lua:certificate%.deployment%.%*%s+dead%s+4 attempts%s+[^\n]*the ticket system is down"), out)
    out = certhook("events --json --status dead" .. conf)
    local found
    for line in out:gmatch("[^\n]+") do
      local e = cjson.decode(line)
      if e.id == id then found = e end
    end
    assert(found, "the dead event is not in --json")
    assert.are.equal("finished", found.state)

    fs.write(srv.dir .. "/fixed", "")
    out, err, code = certhook("replay --dead" .. conf)
    assert.are.equal(0, code, err)
    assert.truthy(out:match("queued a replay of %d+ dead deliver"))
    row = assert(srv:wait_status(id, "c-broken.lua:certificate.deployment.*", "done", 5), "replay did not run")
    assert.are.equal("1", row[2]) -- attempts count from zero again
    assert.are.equal("", row[3]) -- the old error went with the success
    assert.are.equal(5, calls(srv, "broken", id))
    out = certhook("events --status dead" .. conf)
    assert.is_nil(out:find(id, 1, true))
    out = certhook("events --type certificate.deployment.failed" .. conf)
    assert.truthy(out:match("c%-broken%.lua:certificate%.deployment%.%*%s+done%s+1 attempt\n"), out)
    assert.is_nil(out:find("ticket system", 1, true), out)
    os.remove(srv.dir .. "/fixed")
  end)

  -- The server's "replaying" log line for event id, once the replay was taken.
  local function replayed(id)
    return fs.wait_for(function()
      for _, l in ipairs(srv:logs()) do
        if l.message == "replaying" and l.event == id then return l end
      end
    end, 5)
  end

  it("replays an event's dead delivery and not those that succeeded, and says so", function()
    local body, id = cf_event("deployment.succeeded")
    assert.are.equal(202, srv:post("/hooks/cloudflare", body, CF).status)
    assert(srv:wait_status(id, "c-broken.lua:certificate.deployment.*", "dead"))
    assert(srv:wait_status(id, "b-flaky.lua:*", "done"))
    fs.write(srv.dir .. "/fixed", "")
    local out, err, code = certhook("replay " .. id .. " --data '" .. srv.data .. "'")
    assert.are.equal(0, code, err)
    assert.are.equal(("queued a replay of %s:\n" ..
      "  not re-run  a-steady.lua:*  (done, 1 attempt; --handler 'a-steady.lua:*' runs it again)\n" ..
      "  not re-run  b-flaky.lua:*  (done, 3 attempts; --handler 'b-flaky.lua:*' runs it again)\n" ..
      "  runs again  c-broken.lua:certificate.deployment.*  (dead, 4 attempts)\n" ..
      "  and any handler that matches it now but never ran for it\n"):format(id), out)
    assert(srv:wait_status(id, "c-broken.lua:certificate.deployment.*", "done", 5), "the dead delivery did not run")
    os.remove(srv.dir .. "/fixed")
    assert.are.equal(1, replayed(id).deliveries)
    assert.are.equal(5, calls(srv, "broken", id))
    assert.are.equal(1, calls(srv, "steady", id)) -- DESIGN §10: a handler that succeeded is not re-run
    assert.are.equal(3, calls(srv, "flaky", id))
  end)

  it("replays the one delivery --handler names, also one that succeeded", function()
    local body, id = cf_event("issuance.failed")
    assert.are.equal(202, srv:post("/hooks/cloudflare", body, CF).status)
    assert(srv:wait_status(id, "b-flaky.lua:*", "done"))
    local data = " --data '" .. srv.data .. "'"
    local out, err, code = certhook("replay " .. id .. " --handler 'a-steady.lua:*'" .. data)
    assert.are.equal(0, code, err)
    assert.are.equal(("queued a replay of %s:\n  runs again  a-steady.lua:*  (done, 1 attempt)\n"):format(id), out)
    assert(fs.wait_for(function() return calls(srv, "steady", id) == 2 end, 5), "replay did not run")
    assert.are.equal(3, calls(srv, "flaky", id)) -- the other one is left alone
    assert.are.equal(1, replayed(id).deliveries)

    local _, err2, code2 = certhook("replay " .. id .. " --handler 'c-broken.lua:*'" .. data)
    assert.are.equal(1, code2)
    assert.truthy(err2:find("has no delivery to c-broken.lua:* (its deliveries: a-steady.lua:*, b-flaky.lua:*)", 1, true), err2)
    _, err2, code2 = certhook("replay cloudflare:nope" .. data)
    assert.are.equal(1, code2)
    assert.truthy(err2:match("no event with id cloudflare:nope"))
    _, _, code2 = certhook("replay --dead --handler 'a-steady.lua:*'" .. data)
    assert.are.equal(2, code2)
  end)

  it("rejects bad filters with status 2", function()
    local _, err, code = certhook("events --status sleeping --data '" .. srv.data .. "'")
    assert.are.equal(2, code)
    assert.truthy(err:match("%-%-status must be"))
    _, _, code = certhook("replay --data '" .. srv.data .. "'")
    assert.are.equal(2, code)
  end)
end)

-- (issue 21.13: the retry policy's unit test checks the arithmetic; this checks that the
-- dispatcher waits what it says)
describe("the wait between attempts", function()
  it("follows the backoff: exponential, capped at max_backoff, at least half of it", function()
    local srv = Server.start {
      config = SOURCES .. "delivery = { backoff = 0.4, max_backoff = 1, max_attempts = 4 }\n",
      handlers = { ["t.lua"] = [[
        local time = require("certhook").time
        return { ["*"] = function(e)
          local f = assert(io.open("attempts.log", "a")) f:write(("%.3f\n"):format(time.now())) f:close()
          error("fails every time")
        end }]] },
    }
    local body, id = cf_event("validation.failed")
    assert.are.equal(202, srv:post("/hooks/cloudflare", body, CF).status)
    assert(srv:wait_status(id, "t.lua:*", "dead", 10))
    socket.sleep(1.2) -- no fifth attempt comes
    local at = {}
    for l in fs.read(srv.dir .. "/attempts.log"):gmatch("[^\n]+") do at[#at + 1] = tonumber(l) end
    assert.are.equal(4, #at)
    for i, cap in ipairs { 0.4, 0.8, 1 } do -- 0.4 * 2^(n-1), capped at 1
      local wait = at[i + 1] - at[i]
      assert.is_true(wait >= cap / 2 - 0.02 and wait <= cap + 0.3,
        ("wait %d: %.3f s, expected %.2f..%.2f"):format(i, wait, cap / 2, cap))
    end
    srv:cleanup()
  end)
end)

describe("certhook.state", function()
  it("survives a restart and is shared by handlers", function()
    local srv = Server.start {
      config = SOURCES,
      handlers = {
        ["count.lua"] = [[
          local state = require("certhook").state
          return { ["*"] = function(e)
            state.incr("seen")
            state.set("last:" .. e.hostname, { id = e.id, at = e.received_at, tags = { "a", "b" } })
          end }]],
      },
    }
    for i = 1, 3 do
      local body = cf_event("issuance.succeeded", ("h%d.example"):format(i))
      assert.are.equal(202, srv:post("/hooks/cloudflare", body, CF).status)
    end
    assert(fs.wait_for(function()
      local r = srv:sql("SELECT value FROM state WHERE key = 'seen'")
      return r[1] and r[1][1] == "3"
    end, 5), "state not written")
    assert.are.equal(0, srv:stop())
    srv:launch()
    local body = cf_event("issuance.succeeded", "h9.example")
    assert.are.equal(202, srv:post("/hooks/cloudflare", body, CF).status)
    assert(fs.wait_for(function()
      local r = srv:sql("SELECT value FROM state WHERE key = 'seen'")
      return r[1] and r[1][1] == "4"
    end, 5), "the count did not continue after the restart")
    -- the same state, read by `certhook run` on the same journal
    fs.write(srv.dir .. "/read/r.lua", ([[
      local state = require("certhook").state
      return { ["*"] = function()
        local f = io.open(%q, "w")
        local last = state.get("last:h2.example")
        f:write(state.get("seen"), " ", last.tags[2], " ", table.concat(state.keys("last:"), ","))
        f:close()
      end }]]):format(srv.dir .. "/read.out"))
    local _, err, code = certhook(("run --handlers %s/read --data '%s' --event %s"):format(
      srv.dir, srv.data, FIX .. "cloudflare/test-message.json"))
    assert.are.equal(0, code, err)
    assert.are.equal("4 b last:h1.example,last:h2.example,last:h3.example,last:h9.example", fs.read(srv.dir .. "/read.out"))
    srv:cleanup()
  end)
end)

describe("crash safety", function()
  -- posts `count` events from `procs` concurrent shell loops (curl, keep no connection); each
  -- line of results.<k> is "<event id> <http status>"
  local function load(srv, procs, count)
    local body = fs.read(FIX .. "cloudflare/ssl.custom_hostname_certificate.issuance.succeeded.json")
    fs.write(srv.dir .. "/body.json", body)
    for k = 1, procs do
      os.execute(([[cd '%s' && (unset LD_PRELOAD; for i in $(seq 1 %d); do [ -e stop ] && break; id=load-%d-$i; sed "s/<<WEBHOOK_ID>/$id/" body.json > b.%d;
        code=$(curl -s -o /dev/null -w '%%{http_code}' --max-time 5 -H 'Content-Type: application/json' -H 'cf-webhook-auth: s3cret' --data-binary @b.%d http://127.0.0.1:%d/hooks/cloudflare);
        echo "cloudflare:$id $code" >> results.%d; done) >/dev/null 2>&1 &]]):format(srv.dir, count, k, k, k, srv.port, k))
    end
  end

  local function accepted(srv, procs)
    local ids, total = {}, 0
    for k = 1, procs do
      for line in (fs.read(srv.dir .. "/results." .. k) or ""):gmatch("[^\n]+") do
        local id, code = line:match("^(%S+) (%d+)$")
        total = total + 1
        if code == "202" or code == "200" then ids[#ids + 1] = id end
      end
    end
    return ids, total
  end

  local function handled(srv)
    local seen = {}
    for line in (fs.read(srv.dir .. "/calls.log") or ""):gmatch("[^\n]+") do
      seen[line:match("^%S+ (%S+)")] = true
    end
    return seen
  end

  -- (on PostgreSQL the restarted server is another node: it takes the dead one's events once
  -- its delivery.lease runs out, 120 s; postgres_spec kills a server with short leases)
  it("loses none of the events that got a 2xx when killed with SIGKILL under load #sqlite", function()
    local srv = Server.start { config = SOURCES, handlers = { ["rec.lua"] = recorder("rec") } }
    load(srv, 6, 400)
    -- under load, not at a fixed time: a busy machine takes a second for the first few dozen
    assert(fs.wait_for(function() return #accepted(srv, 6) > 60 end, 20), "the load did not start")
    srv:signal("KILL")
    srv:wait_exit(5)
    fs.write(srv.dir .. "/stop", "")
    socket.sleep(0.5) -- the clients see refused connections, then stop
    local ids, total = accepted(srv, 6)
    assert.is_true(#ids > 50, ("only %d events were accepted before the kill"):format(#ids))
    assert.is_true(total > #ids or total < 2400, "the kill came after the load ended")
    srv:launch()
    local missing
    assert(fs.wait_for(function()
      local seen = handled(srv)
      missing = nil
      for _, id in ipairs(ids) do
        if not seen[id] then missing = id return false end
      end
      return true
    end, 15), "an accepted event was never handled: " .. tostring(missing))
    for _, id in ipairs(ids) do
      assert.are.equal(1, #srv:sql(("SELECT 1 FROM events WHERE id = '%s'"):format(id)), id .. " is not in the journal")
    end
    print(("# kill -9: %d of %d requests got a 2xx before the kill; all %d handled after the restart"):format(#ids, total, #ids))
    assert.are.equal(0, srv:stop())
    srv:cleanup()
  end)

  it("stops with status 0 on SIGTERM under load, losing nothing", function()
    local srv = Server.start { config = SOURCES, handlers = { ["rec.lua"] = recorder("rec") } }
    load(srv, 4, 300)
    -- under load, not at a fixed time (as above): the stop comes while requests are coming in
    assert(fs.wait_for(function() return #accepted(srv, 4) > 30 end, 20), "the load did not start")
    assert.are.equal(0, srv:stop("TERM"), srv:log_text())
    fs.write(srv.dir .. "/stop", "")
    socket.sleep(0.5)
    local ids = accepted(srv, 4)
    assert.is_true(#ids > 20)
    srv:launch()
    assert(fs.wait_for(function()
      local seen = handled(srv)
      for _, id in ipairs(ids) do if not seen[id] then return false end end
      return true
    end, 15), "an accepted event was never handled")
    assert.are.equal(0, srv:stop())
    srv:cleanup()
  end)

  -- (on PostgreSQL only once the killed node's lease runs out, as above)
  it("runs again, at the next start, a delivery interrupted by a crash #sqlite", function()
    local srv = Server.start {
      config = SOURCES,
      handlers = { ["slow.lua"] = [[
        return { ["*"] = function(e)
          local f = io.open("calls.log", "a") f:write("slow ", e.id, "\n") f:close()
          local t = os.clock() + 0.6 while os.clock() < t do end
        end }]] },
    }
    local body, id = cf_event()
    assert.are.equal(202, srv:post("/hooks/cloudflare", body, CF).status)
    assert(fs.wait_for(function() return calls(srv, "slow", id) == 1 end, 5))
    srv:signal("KILL") -- in the middle of the handler
    srv:wait_exit(5)
    -- a delivery the journal knew as running (as an attempt that waits on the network is)
    local body2, id2 = cf_event("issuance.succeeded")
    srv:launch()
    assert.are.equal(202, srv:post("/hooks/cloudflare", body2, CF).status)
    assert(srv:wait_status(id2, "slow.lua:*", "done"))
    assert.are.equal(0, srv:stop())
    if srv:deliveries() == "all_deliveries" then -- SQLite keeps a first success in its event's row
      srv:sql(("INSERT INTO deliveries (event_seq, handler, status, attempts, first_at) SELECT seq, 'slow.lua:*', 'running', 1, received_at FROM events WHERE id = '%s'; UPDATE events SET done = NULL, state = 1 WHERE id = '%s'"):format(id2, id2))
    else
      srv:sql(("UPDATE deliveries SET status = 'running' WHERE handler = 'slow.lua:*' AND event_seq = (SELECT seq FROM events WHERE id = '%s')"):format(id2))
    end
    srv:launch()
    assert(srv:wait_status(id, "slow.lua:*", "done"), "the interrupted delivery did not run again")
    assert.are.equal(2, calls(srv, "slow", id))
    assert(srv:wait_status(id2, "slow.lua:*", "done"))
    assert.are.equal(2, calls(srv, "slow", id2))
    assert.truthy(srv:log_text():match("1 deliveries interrupted by the last stop count an attempt and run again after their backoff"))
    assert.are.equal(0, srv:stop())
    srv:cleanup()
  end)

  -- A first-attempt success is kept in its event's row (events.done), not as a row of its own:
  -- read, listed, counted and replayed as before, and done for good once recorded.
  it("keeps a delivery that succeeded at its first attempt in its event's row, never runs it again after kill -9 #sqlite", function()
    local srv = Server.start {
      config = SOURCES .. "delivery = { backoff = 0.05, max_backoff = 0.1 }\n",
      handlers = {
        ["a-rec.lua"] = recorder("rec"), ["b-flaky.lua"] = flaky("flaky", 1),
        -- waits: journaled as running (a row) first, then done at its first attempt
        ["c-wait.lua"] = [[
          local certhook = require "certhook"
          return { ["*"] = function(e) assert(certhook.exec{ argv = { "sleep", "0.3" } }) end }]],
      },
    }
    local body, id = cf_event()
    assert.are.equal(202, srv:post("/hooks/cloudflare", body, CF).status)
    assert(fs.wait_for(function()
      return #srv:sql(("SELECT 1 FROM deliveries d JOIN events e ON e.seq = d.event_seq WHERE e.id = '%s' AND d.handler = 'c-wait.lua:*' AND d.status = 'running'"):format(id)) == 1
    end, 5), "the waiting delivery was not journaled as running")
    assert(srv:wait_status(id, "b-flaky.lua:*", "done"))
    assert(srv:wait_status(id, "c-wait.lua:*", "done"))
    assert.are.same({ "done", "1", "", "2" }, srv:delivery(id, "a-rec.lua:*"))
    local seq = srv:sql(("SELECT seq FROM events WHERE id = '%s'"):format(id))[1][1]
    assert.are.same({ { "b-flaky.lua:*", "2" } },
      srv:sql("SELECT handler, attempts FROM deliveries WHERE event_seq = " .. seq))
    assert.truthy(srv:sql("SELECT done FROM events WHERE seq = " .. seq)[1][1]:match("^%[%[%d+,1,%d+,%d+%],%[%d+,1,%d+,%d+%]%]$"))
    assert.are.equal(3, #srv:sql("SELECT 1 FROM all_deliveries WHERE event_seq = " .. seq))
    local conf = " --data '" .. srv.data .. "'"
    local out = certhook("events --json" .. conf)
    local e = cjson.decode(out:match("[^\n]+"))
    assert.are.equal("finished", e.state)
    assert.are.equal("a-rec.lua:*", e.deliveries[1].handler)
    assert.are.equal("done", e.deliveries[1].status)
    assert.are.equal(1, e.deliveries[1].attempts)
    assert.are.equal(1, e.deliveries[1].generation)
    assert.is_true(math.abs(e.deliveries[1].last_attempt_at - e.received_at) < 5)
    assert.are.equal(2, e.deliveries[2].attempts)
    assert.are.equal("c-wait.lua:*", e.deliveries[3].handler)
    assert.are.equal(1, e.deliveries[3].attempts)
    assert.truthy(certhook("events --status done" .. conf):match("a%-rec%.lua:%*%s+done%s+1 attempt\n"))

    srv:signal("KILL")
    srv:wait_exit(5)
    srv:launch()
    local body2, id2 = cf_event("issuance.succeeded")
    assert.are.equal(202, srv:post("/hooks/cloudflare", body2, CF).status)
    assert(srv:wait_status(id2, "a-rec.lua:*", "done"))
    assert(srv:wait_status(id2, "b-flaky.lua:*", "done"))
    assert(srv:wait_status(id2, "c-wait.lua:*", "done"))
    socket.sleep(0.3)
    assert.are.equal(1, calls(srv, "rec", id)) -- recorded done: not run again
    assert.are.equal(2, calls(srv, "flaky", id))
    local metrics = require("helpers.http").get(srv.admin, "/metrics").body
    assert.truthy(metrics:find('certhook_journal_deliveries{status="done"} 6\n', 1, true), metrics)

    -- a replay leaves it alone unless named; named, it runs again and its entry is replaced
    assert.truthy(certhook("replay " .. id .. conf):find("not re-run  a-rec.lua:*  (done, 1 attempt;", 1, true))
    out = certhook("replay " .. id .. " --handler 'a-rec.lua:*'" .. conf)
    assert.truthy(out:find("runs again  a-rec.lua:*  (done, 1 attempt)", 1, true), out)
    assert(fs.wait_for(function() return calls(srv, "rec", id) == 2 end, 5), "the replay did not run")
    socket.sleep(0.3)
    assert.are.equal(2, calls(srv, "flaky", id))
    assert.are.same({ "done", "1", "", "2" }, srv:delivery(id, "a-rec.lua:*"))
    assert.are.equal(1, #srv:sql(("SELECT 1 FROM all_deliveries WHERE event_seq = %s AND handler = 'a-rec.lua:*'"):format(seq)))
    assert.are.equal(0, srv:stop())
    srv:cleanup()
  end)

  it("lets a running delivery finish on SIGTERM", function()
    local srv = Server.start {
      config = SOURCES,
      handlers = { ["slow.lua"] = [[
        return { ["*"] = function(e)
          local t = os.clock() + 0.8 while os.clock() < t do end
          local f = io.open("finished", "w") f:write(e.id) f:close()
        end }]] },
    }
    local body, id = cf_event()
    assert.are.equal(202, srv:post("/hooks/cloudflare", body, CF).status)
    socket.sleep(0.2)
    assert.are.equal(0, srv:stop("TERM"))
    assert.are.equal(id, fs.read(srv.dir .. "/finished"))
    assert.are.same({ "done", "1", "", "2" }, srv:delivery(id, "slow.lua:*"))
    srv:cleanup()
  end)
end)

describe("retention", function()
  it("prunes finished events after journal.retention; their ids are new again", function()
    local srv = Server.start {
      config = SOURCES .. "journal = { busy_timeout = 0.3, retention = 1 }\n",
      handlers = { ["rec.lua"] = recorder("rec") },
    }
    local body, id = cf_event()
    assert.are.equal(202, srv:post("/hooks/cloudflare", body, CF).status)
    assert.are.equal(200, srv:post("/hooks/cloudflare", body, CF).status) -- within the window
    assert(fs.wait_for(function() return #srv:sql(("SELECT 1 FROM events WHERE id = '%s'"):format(id)) == 0 end, 6),
      "the finished event was not pruned")
    assert.are.equal(0, #srv:sql("SELECT 1 FROM " .. srv:deliveries()))
    assert.are.equal(202, srv:post("/hooks/cloudflare", body, CF).status)
    srv:cleanup()
  end)

  it("prunes the journal of replays asked (replay_log) after journal.retention, by age", function()
    local srv = Server.start {
      config = SOURCES .. "journal = { busy_timeout = 0.3, retention = 2 }\n",
      handlers = { ["rec.lua"] = recorder("rec") },
    }
    local http = require "helpers.http"
    local body, id = cf_event()
    assert.are.equal(202, srv:post("/hooks/cloudflare", body, CF).status)
    assert(srv:wait_status(id, "rec.lua:*", "done"))
    local r = http.request(srv.admin, "POST", "/api/events/" .. id .. "/replay?handler=rec.lua:*")
    assert.are.equal(202, r.status, r.body)
    local _, err, code = fs.run(("cd '%s' && %s replay --dead --config certhook.conf.lua"):format(srv.dir, Server.certhook))
    assert.are.equal(0, code, err) -- every dead delivery (none): journaled without an event
    local t0 = socket.gettime()
    assert.are.equal(2, #srv:sql("SELECT id FROM replay_log"))
    assert(fs.wait_for(function() return #srv:sql("SELECT id FROM replay_log") == 0 end, 10),
      "replay_log was not pruned")
    assert.is_true(socket.gettime() - t0 > 1, "pruned before the retention")
    srv:cleanup()
  end)
end)

describe("the write-ahead log", function()
  -- Without checkpoints SQLite's WAL grows by every page written, for as long as certhook runs.
  it("is copied into the database while certhook serves, so it stays bounded #sqlite", function()
    local srv = Server.start { config = SOURCES, handlers = { ["rec.lua"] = recorder("rec") } }
    local n = 5000
    local body = fs.read(FIX .. "cloudflare/ssl.custom_hostname_certificate.issuance.succeeded.json")
    local cfg = {}
    for i = 1, n do
      local id = ("wal-%d"):format(i)
      fs.write(("%s/b%d.json"):format(srv.dir, i), (body:gsub("<<WEBHOOK_ID>", id)))
      cfg[#cfg + 1] = ('%surl = "http://127.0.0.1:%d/hooks/cloudflare"\nheader = "cf-webhook-auth: s3cret"\n' ..
        'header = "Content-Type: application/json"\ndata-binary = "@b%d.json"\noutput = "/dev/null"\n' ..
        'write-out = "%%{http_code}\\n"\n'):format(i > 1 and "next\n" or "", srv.port, i)
    end
    fs.write(srv.dir .. "/curl.conf", table.concat(cfg))
    local out = fs.run(("cd '%s' && unset LD_PRELOAD; curl -s --parallel --parallel-max 20 --max-time 60 -K curl.conf"):format(srv.dir))
    local accepted = select(2, out:gsub("202", ""))
    assert.are.equal(n, accepted)
    local db = srv.dir .. "/data/certhook.db"
    local function size(path)
      local f = io.open(path, "rb")
      if not f then return 0 end
      local len = f:seek("end")
      f:close()
      return len
    end
    -- every event was written twice (journaled, then its delivery): well past the 2000 pages
    -- after which the checkpointer runs; the database file itself has the events now
    assert(fs.wait_for(function() return size(db) > 2 * 1024 * 1024 end, 10),
      ("nothing was checkpointed: certhook.db is %d bytes, its WAL %d"):format(size(db), size(db .. "-wal")))
    assert.are.equal(0, srv:stop())
    srv:cleanup()
  end)
end)

describe("journal write failures", function()
  -- (SQLite's files; postgres_spec has a read-only database and a PostgreSQL restart)
  it("answer 503 with Retry-After and store nothing while the WAL file is read-only #sqlite", function()
    local srv = Server.start { config = SOURCES, handlers = { ["rec.lua"] = recorder("rec") } }
    local warm = cf_event()
    assert.are.equal(202, srv:post("/hooks/cloudflare", warm, CF).status)
    local wal = srv.dir .. "/data/certhook.db-wal"
    local _, err, code = fs.run("chattr +i '" .. wal .. "'")
    assert.are.equal(0, code, "chattr +i is needed for this test: " .. tostring(err))
    local body, id = cf_event()
    local ok, r = pcall(function() return srv:post("/hooks/cloudflare", body, CF) end)
    fs.run("chattr -i '" .. wal .. "'")
    assert(ok, r)
    assert.are.equal(503, r.status)
    assert.truthy(tonumber(r.headers["retry-after"]))
    assert.are.equal(0, #srv:sql(("SELECT 1 FROM events WHERE id = '%s'"):format(id)))
    assert.are.equal(202, srv:post("/hooks/cloudflare", body, CF).status)
    assert(fs.wait_for(function() return calls(srv, "rec", id) == 1 end, 5))
    srv:cleanup()
  end)

  -- (a data directory on a small tmpfs: SQLite's, whatever journal the other tests use)
  it("answer 503 while the disk is full, and recover when there is room #sqlite", function()
    local dir = fs.tmpdir()
    local mnt = dir .. "/small"
    os.execute("mkdir -p '" .. mnt .. "'")
    local _, err, code = fs.run(("mount -t tmpfs -o size=1m tmpfs '%s'"):format(mnt))
    assert.are.equal(0, code, "mounting a small tmpfs is needed for this test: " .. tostring(err))
    local srv
    local ok, failure = pcall(function()
      srv = Server.start { dir = dir, config = SOURCES .. ('data = %q\n'):format(mnt .. "/data"),
        handlers = { ["rec.lua"] = recorder("rec") } }
      assert.are.equal(202, srv:post("/hooks/cloudflare", (cf_event()), CF).status)
      fs.run(("dd if=/dev/zero of='%s/filler' bs=4k 2>/dev/null"):format(mnt)) -- fills it up
      local got503 = 0
      local body, id = cf_event()
      local r = srv:post("/hooks/cloudflare", body, CF)
      if r.status == 503 then got503 = 1 end
      assert.are.equal(503, r.status, r.body)
      assert.truthy(r.json.message:match("full"), r.json.message)
      assert.truthy(tonumber(r.headers["retry-after"]))
      os.remove(mnt .. "/filler")
      r = srv:post("/hooks/cloudflare", body, CF)
      assert.are.equal(202, r.status, r.body)
      assert(fs.wait_for(function() return calls(srv, "rec", id) == 1 end, 5))
      assert.are.equal(1, got503)
    end)
    if srv then srv:stop("KILL") end
    fs.run(("umount '%s'"):format(mnt))
    fs.rm(dir)
    assert(ok, failure)
  end)
end)
