-- A small HTTP/1.1 client over luasocket for the e2e specs: exact control over what is sent
-- (headers only, lying lengths) and what comes back.
local socket = require "socket"
local cjson = require "cjson"

local M = {}

-- Every credential sent (cf-webhook-auth, Authorization): the server helper checks that none
-- ever shows up in a server log.
M.sent_secrets = {}

local function remember(k, v)
  k = k:lower()
  if k == "cf-webhook-auth" or k == "x-api-key" or k == "x-webhook-key" then M.sent_secrets[v] = true end
  if k == "authorization" then M.sent_secrets[v:match("^%S+%s+(.*)$") or v] = true end
end

local function read_response(c)
  local line, err = c:receive("*l")
  if not line then return nil, err end
  local status = tonumber(line:match("^HTTP/1%.%d (%d+)"))
  local headers = {}
  while true do
    local h = assert(c:receive("*l"))
    if h == "" then break end
    local k, v = h:match("^([^:]+):%s*(.*)$")
    headers[k:lower()] = v
  end
  local body = ""
  if headers["content-length"] then
    body = assert(c:receive(tonumber(headers["content-length"])))
  end
  local ok, json = pcall(cjson.decode, body)
  return { status = status, headers = headers, body = body, json = ok and json or nil }
end

-- request(port, method, path [, headers [, body [, opts]]]) -> response
-- opts.send_body = false sends only the headers (the body is never written).
function M.request(port, method, path, headers, body, opts)
  opts = opts or {}
  local c = socket.tcp()
  c:settimeout(opts.timeout or 10)
  assert(c:connect("127.0.0.1", port))
  local lines = { ("%s %s HTTP/1.1"):format(method, path), "Host: 127.0.0.1", "Connection: close" }
  local has_length = false
  for k, v in pairs(headers or {}) do
    remember(k, v)
    lines[#lines + 1] = k .. ": " .. v
    has_length = has_length or k:lower() == "content-length"
  end
  if body and not has_length then lines[#lines + 1] = "Content-Length: " .. #body end
  local req = table.concat(lines, "\r\n") .. "\r\n\r\n"
  if body and opts.send_body ~= false then req = req .. body end
  assert(c:send(req))
  local resp, err = read_response(c)
  c:close()
  return resp or error("no response: " .. tostring(err))
end

-- post(port, path, body, headers): JSON POST
function M.post(port, path, body, headers)
  local h = { ["Content-Type"] = "application/json" }
  for k, v in pairs(headers or {}) do h[k] = v end
  return M.request(port, "POST", path, h, body)
end

function M.get(port, path)
  return M.request(port, "GET", path)
end

return M
