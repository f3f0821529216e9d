-- The command line's C functions (luaopen_certhook_cli, in the same shared object as
-- certhook.core; no handler state loads them), as the specs call them: normalize and run of a
-- payload that holds one event give that event (and its results) directly.
local path = assert(package.searchpath("certhook.core", package.cpath))
local cli = assert(package.loadlib(path, "luaopen_certhook_cli"))()

local M = setmetatable({ cli = cli }, { __index = cli }) -- M.cli: the functions as they are

-- body [, opts] -> the event handlers get | nil, message, status
function M.normalize(body, opts)
  local events, msg, status = cli.normalize(body, opts)
  if not events then return nil, msg, status end
  return events[1]
end

-- dir, body [, opts] -> {event =, type =, results = {...}} | nil, message
function M.run(dir, body, opts)
  local r, err = cli.run(dir, body, opts)
  if not r then return nil, err end
  return r.events[1]
end

return M
