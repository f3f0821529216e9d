-- A Cloudflare API double on loopback (tests/helpers/cf_api.lua starts it): GET
-- /client/v4/zones/<zone>/custom_hostnames?page=&per_page= answers pages of the custom hostnames
-- listed in <dir>/state.json, each made from the official example body
-- (tests/fixtures/pollers/cloudflare.custom_hostnames.json, POLLERS.md §1a) with its hostname, ids,
-- ssl.status and ssl.expires_on replaced. state.json, reread at every request:
--   { zone = "...", token = "...", hostnames = { {hostname=, id=, ssl_id=, status=, expires_on=} },
--     fail = { {status = 429, retry_after = "2"}, ... } (answered first, one per request, then
--     dropped) }
-- Every request is appended to <dir>/requests.jsonl: {at, method, path, query, authorization}.
-- usage: lua5.4 cf_api_server.lua DIR FIXTURE   (prints "listening PORT" to DIR/out)
local cjson = require "cjson"
local socket = require "socket"

local dir, fixture = arg[1], arg[2]

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function write(path, s)
  local f = assert(io.open(path .. ".tmp", "wb"))
  f:write(s)
  f:close()
  assert(os.rename(path .. ".tmp", path))
end

local template = cjson.decode(assert(read(fixture)))
-- CF_API_FROZEN=1 (benchmarks): state.json is read once and each page made once, so that the
-- double costs next to nothing per request.
local cache, pages = nil, {}
if os.getenv("CF_API_FROZEN") == "1" then cache = cjson.decode(read(dir .. "/state.json")) end

local function reply(c, status, body, headers)
  local reason = ({ [200] = "OK", [400] = "Bad Request", [401] = "Unauthorized", [404] = "Not Found",
    [429] = "Too Many Requests", [500] = "Internal Server Error", [503] = "Service Unavailable" })[status] or "X"
  local h = { ("HTTP/1.1 %d %s"):format(status, reason), "Content-Type: application/json",
    "Content-Length: " .. #body, "Connection: close" }
  for k, v in pairs(headers or {}) do h[#h + 1] = k .. ": " .. v end
  c:send(table.concat(h, "\r\n") .. "\r\n\r\n" .. body)
end

local function failure(code, message)
  return cjson.encode { success = false, errors = { { code = code, message = message } }, messages = {},
    result = cjson.null }
end

local function item(h)
  local it = cjson.decode(cjson.encode(template.result[1]))
  it.hostname, it.id = h.hostname, h.id
  it.ssl.id, it.ssl.status, it.ssl.hosts = h.ssl_id, h.status, { h.hostname }
  it.ssl.expires_on = h.expires_on or cjson.null
  it.ssl.validation_errors = h.status == "pending_validation" and it.ssl.validation_errors or nil
  it.status = h.status == "active" and "active" or "pending"
  return it
end

local function serve(c)
  c:settimeout(2)
  local line = c:receive("*l")
  if not line then return end
  local headers = {}
  while true do
    local l = c:receive("*l")
    if not l or l == "" then break end
    local k, v = l:match("^([^:]+):%s*(.*)$")
    if k then headers[k:lower()] = v end
  end
  local method, target = line:match("^(%S+)%s+(%S+)")
  local path, query = target:match("^([^?]*)%??(.*)$")
  local q = {}
  for k, v in query:gmatch("([^&=]+)=([^&]*)") do q[k] = v end
  local f = io.open(dir .. "/requests.jsonl", "a")
  f:write(cjson.encode { at = socket.gettime(), method = method, path = path, query = q, authorization = headers.authorization }, "\n")
  f:close()
  local state = cache or cjson.decode(read(dir .. "/state.json"))
  if state.fail and #state.fail > 0 then
    local fl = table.remove(state.fail, 1)
    write(dir .. "/state.json", cjson.encode(state))
    return reply(c, fl.status, fl.body or failure(fl.status == 429 and 971 or 1000, "Please wait and consider throttling your request speed"),
      fl.retry_after and { ["Retry-After"] = fl.retry_after } or nil)
  end
  if headers.authorization ~= "Bearer " .. state.token then
    return reply(c, 400, failure(6003, "Invalid request headers"))
  end
  if method ~= "GET" or path ~= ("/client/v4/zones/%s/custom_hostnames"):format(state.zone) then
    return reply(c, 404, failure(7003, "No route for the URI"))
  end
  local page, per_page = tonumber(q.page or "1"), tonumber(q.per_page or "20")
  local out = { success = true, errors = {}, messages = {}, result = {},
    result_info = { page = page, per_page = per_page, count = 0, total_count = #state.hostnames } }
  for i = (page - 1) * per_page + 1, math.min(page * per_page, #state.hostnames) do
    out.result[#out.result + 1] = item(state.hostnames[i])
  end
  out.result_info.count = #out.result
  setmetatable(out.result, cjson.empty_array_mt)
  local body = pages[target] or cjson.encode(out)
  if cache then pages[target] = body end
  reply(c, 200, body)
end

local server = assert(socket.bind("127.0.0.1", 0))
local _, port = server:getsockname()
write(dir .. "/out", "listening " .. port .. "\n")
while true do
  local c = server:accept()
  if c then
    pcall(serve, c)
    c:close()
  end
end
