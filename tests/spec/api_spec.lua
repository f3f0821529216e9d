-- The Lua API (DESIGN §5): certhook.log, certhook.time, certhook.json, certhook.http.
-- Both error channels: misuse raises, runtime failure returns nil, message, code.
local certhook = require "certhook"
local cjson = require "cjson"
local socket = require "socket"
local fs = require "helpers.fs"

-- Runs Lua code in a separate interpreter (certhook.log writes to file descriptor 2).
local function lua_stderr(code)
  local _, err, status = fs.run(("lua5.4 -e %q"):format(code))
  return err, status
end

describe("certhook.log", function()
  it("writes one JSON line per call with time, level, message and fields", function()
    local err = lua_stderr([[local log = require('certhook').log
      log.info('hello', { hostname = 'a.example', n = 3 })
      log.warn('second')
      log.debug('not shown at the default level')]])
    local lines = {}
    for l in err:gmatch("[^\n]+") do lines[#lines + 1] = cjson.decode(l) end
    assert.are.equal(2, #lines)
    assert.are.equal("info", lines[1].level)
    assert.are.equal("hello", lines[1].message)
    assert.are.same({ hostname = "a.example", n = 3 }, lines[1].fields)
    assert.truthy(lines[1].time:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$"))
    assert.are.equal("warn", lines[2].level)
    assert.is_nil(lines[2].event) -- outside a handler there is no event context
  end)

  it("escapes what it is given and survives fields JSON cannot hold", function()
    local err = lua_stderr([[local log = require('certhook').log
      log.error('quote " and\nnewline', { f = function() end })]])
    local line = cjson.decode(err:match("[^\n]+"))
    assert.are.equal('quote " and\nnewline', line.message)
    assert.truthy(line.fields_error)
  end)

  it("raises on misuse", function()
    assert.has_error(function() certhook.log.info() end)
    assert.has_error(function() certhook.log.info({}) end)
    assert.has_error(function() certhook.log.info("x", "not a table") end)
  end)
end)

describe("certhook.time", function()
  it("formats epoch seconds as ISO 8601 UTC", function()
    assert.are.equal("2022-02-09T00:03:28Z", certhook.time.iso8601(1644365008))
    assert.are.equal("2022-02-09T00:03:28.385Z", certhook.time.iso8601(1644365008.385))
    assert.truthy(certhook.time.iso8601():match("^%d%d%d%d%-"))
  end)

  it("parses ISO 8601, or returns nil, message, code", function()
    assert.are.equal(1644365008, certhook.time.parse("2022-02-09T00:03:28Z"))
    assert.are.equal("integer", math.type(certhook.time.parse("2022-02-09T00:03:28Z")))
    local t, msg, code = certhook.time.parse("next tuesday")
    assert.is_nil(t)
    assert.truthy(msg:match("not an ISO 8601"))
    assert.are.equal("invalid", code)
    assert.has_error(function() certhook.time.parse() end)
  end)

  it("tells the time", function()
    assert.is_true(math.abs(certhook.time.now() - os.time()) < 2)
  end)
end)

describe("certhook.json", function()
  it("is lua-cjson", function()
    assert.are.equal(cjson, certhook.json)
  end)
end)

describe("certhook.http", function()
  -- a one-shot HTTP server on loopback, answering with the given raw response
  local function serve_once(response)
    local srv = assert(socket.bind("127.0.0.1", 0))
    local _, port = srv:getsockname()
    local script = ([[
      local socket = require "socket"
      local srv = assert(socket.bind("127.0.0.1", %d))
      local c = srv:accept()
      c:settimeout(5)
      local req = {}
      while true do
        local l = c:receive("*l")
        if not l or l == "" then break end
        req[#req + 1] = l
      end
      local len = 0
      for _, l in ipairs(req) do len = tonumber(l:lower():match("^content%%-length: (%%d+)")) or len end
      local body = len > 0 and c:receive(len) or ""
      local f = io.open(%q, "w") f:write(table.concat(req, "\n"), "\n\n", body) f:close()
      c:send(%q)
      c:close()
    ]])
    srv:close()
    local seen = os.tmpname()
    local path = os.tmpname()
    fs.write(path, script:format(port, seen, response))
    os.execute(("LUA_PATH='%s' lua5.4 %s &"):format(package.path, path))
    socket.sleep(0.2)
    return port, seen
  end

  it("sends JSON and decodes a JSON reply", function()
    local port, seen = serve_once("HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nX-Thing: a\r\nContent-Length: 17\r\n\r\n{\"ok\":true,\"n\":2}")
    local r, err = certhook.http.request {
      url = ("http://127.0.0.1:%d/api/x"):format(port), method = "put",
      headers = { Authorization = "Bearer t0ken" }, json = { hostname = "a.example" }, timeout = 5,
    }
    assert(r, err)
    assert.are.equal(201, r.status)
    assert.are.same({ ok = true, n = 2 }, r.json)
    assert.are.equal("integer", math.type(r.json.n))
    assert.are.equal("a", r.headers["x-thing"])
    local req = fs.read(seen)
    assert.truthy(req:match("^PUT /api/x HTTP/1.1"))
    assert.truthy(req:match("Authorization: Bearer t0ken"))
    assert.truthy(req:match("Content%-Type: application/json"))
    assert.are.same({ hostname = "a.example" }, cjson.decode(req:match("\n\n(.*)$")))
  end)

  it("treats a 500 reply as a response, not an error", function()
    local port = serve_once("HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops")
    local r = assert(certhook.http.get(("http://127.0.0.1:%d/"):format(port)))
    assert.are.equal(500, r.status)
    assert.are.equal("oops", r.body)
    assert.is_nil(r.json)
  end)

  it("does not follow redirects", function()
    local port = serve_once("HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/\r\nContent-Length: 0\r\n\r\n")
    local r = assert(certhook.http.post(("http://127.0.0.1:%d/"):format(port), "x"))
    assert.are.equal(302, r.status)
  end)

  it("returns nil, message, code on transport failures", function()
    local srv = assert(socket.bind("127.0.0.1", 0))
    local _, port = srv:getsockname()
    srv:close()
    local r, msg, code = certhook.http.get(("http://127.0.0.1:%d/"):format(port))
    assert.is_nil(r)
    assert.is_string(msg)
    assert.are.equal("connrefused", code)
    r, msg, code = certhook.http.get("ftp://127.0.0.1/")
    assert.are.equal("url", code)
  end)

  it("caps the response size", function()
    local port = serve_once("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" .. ("x"):rep(100))
    local r, _, code = certhook.http.get(("http://127.0.0.1:%d/"):format(port), { max_size = 10 })
    assert.is_nil(r)
    assert.are.equal("toolarge", code)
  end)

  it("raises on misuse", function()
    assert.has_error(function() certhook.http.request {} end, "certhook.http.request: url must be a string")
    assert.has_error(function() certhook.http.request { url = "http://x", timeout = -1 } end)
    assert.has_error(function() certhook.http.request { url = "http://x", body = "a", json = {} } end)
    assert.has_error(function() certhook.http.request { url = "http://x", headers = "h" } end)
    assert.has_error(function() certhook.http.get() end)
    assert.has_error(function() certhook.http.post("http://x", 42) end)
  end)
end)
