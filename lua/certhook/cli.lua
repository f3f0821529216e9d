-- certhook.cli: the command line (DESIGN §6). The bin script calls M.main(arg).
--
-- Parses the command and its flags, loads the config file (a Lua file whose globals are the
-- settings, DESIGN §8), lets flags override it and calls the C core. Exit status: 0 success,
-- 1 a failure to act on (the message names the file, line or event), 2 bad usage.
local api = require "certhook.core"
local cjson = require "cjson"

-- The command line's C functions: in the same shared object as certhook.core, under an entry
-- point no handler state loads.
local core = assert(package.loadlib(assert(package.searchpath("certhook.core", package.cpath)),
  "luaopen_certhook_cli"))()

local M = {}

local SETTINGS = {
  listen = true, admin = true, admin_token = true, admin_read_token = true, handlers = true, data = true, tls = true,
  sources = true, delivery = true, limits = true, journal = true, log = true, metrics = true,
  watchdog = true, reload = true, pollers = true,
}

local USAGE = [[
usage: certhook <command> [options]

  serve      receive webhooks and run the handlers
  check      load every handler as serve would; report file:line of any error
  normalize  print the normalized event of a payload file
  run        run the handlers matching a payload once, locally
  send       POST a payload file to a running server
  events     list journaled events and their deliveries
  certs      list the certificates certhook has heard of, soonest expiry first
  replay     run an event's deliveries, or every dead one, again
  migrate    copy a data directory's journal into a PostgreSQL database
  reload     make the running server reread its config and handlers
  version    print the versions of certhook and its libraries

Every command takes --config FILE (default: ./certhook.conf.lua if it exists).
`certhook <command> --help` describes one command.
]]

local COMMANDS = {}

-- ---- small helpers --------------------------------------------------------------------------

local Exit = {} -- raised as {Exit, code} to leave main with a status

local quiet = false -- set while a running server rereads its config: errors are returned

local function die(code, fmt, ...)
  local msg = fmt:format(...)
  if not quiet then io.stderr:write("certhook: ", msg, "\n") end
  error({ Exit, code, msg }, 0)
end

local function read_file(path)
  local f, err
  if path == "-" then f = io.stdin else f, err = io.open(path, "rb") end
  if not f then die(1, "%s", err) end
  local body = f:read("a")
  if f ~= io.stdin then f:close() end
  return body
end

local function dirname(path)
  return path:match("^(.*)/[^/]*$") or "."
end

local function resolve(base, path)
  if type(path) ~= "string" or path:sub(1, 1) == "/" or path:match("^%-%-%-%-%-BEGIN") or
      path:match("^postgresql://") or path:match("^postgres://") then -- a URI is no path
    return path
  end
  return base == "." and path or base .. "/" .. path
end

-- A number as JSON: integers exactly, floats with the fewest digits that read back equal.
local function json_number(v)
  if math.type(v) == "integer" then return tostring(v) end
  if v ~= v or v == math.huge or v == -math.huge then return "null" end
  for digits = 14, 17 do
    local s = ("%." .. digits .. "g"):format(v)
    if tonumber(s) == v then return s end
  end
end

local ESCAPES = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }

local function json_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    return ESCAPES[c] or ("\\u%04x"):format(c:byte())
  end) .. '"'
end

-- Pretty JSON with sorted keys, for people reading `normalize` output.
local function pretty(v, indent)
  indent = indent or ""
  local t = type(v)
  if t == "string" then return json_string(v) end
  if t == "number" then return json_number(v) end
  if t == "boolean" then return tostring(v) end
  if t ~= "table" then return "null" end
  local n = #v
  local keys, count = {}, 0
  for k in pairs(v) do
    count = count + 1
    keys[#keys + 1] = k
  end
  if count == 0 then return "{}" end
  local inner, out = indent .. "  ", {}
  if count == n then
    for i = 1, n do out[i] = inner .. pretty(v[i], inner) end
    return "[\n" .. table.concat(out, ",\n") .. "\n" .. indent .. "]"
  end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  for i, k in ipairs(keys) do
    out[i] = inner .. json_string(tostring(k)) .. ": " .. pretty(v[k], inner)
  end
  return "{\n" .. table.concat(out, ",\n") .. "\n" .. indent .. "}"
end
M.pretty = pretty

-- ---- arguments and configuration -----------------------------------------------------------

-- Parses args after the command: "--name value" / "--name=value" for the options the command
-- takes; the rest are positional. Returns opts, positional.
local function parse_args(cmd, name, args)
  local opts, pos, i = {}, {}, 1
  while i <= #args do
    local a = args[i]
    if a == "-h" or a == "--help" then
      io.stdout:write(cmd.help, "\n")
      error({ Exit, 0 }, 0)
    end
    local key, value = a:match("^%-%-([%w-]+)=(.*)$")
    key = key or a:match("^%-%-([%w-]+)$")
    if key then
      if not cmd.options[key] then
        die(2, "%s: unknown option --%s\n%s", name, key, cmd.help)
      end
      if cmd.options[key] == "flag" then
        if value ~= nil then die(2, "%s: --%s takes no value", name, key) end
        value = true
      elseif value == nil then
        i = i + 1
        value = args[i]
        if value == nil then die(2, "%s: --%s needs a value", name, key) end
      end
      opts[key] = value
    elseif a ~= "-" and a:sub(1, 1) == "-" then
      die(2, "%s: unknown option %s\n%s", name, a, cmd.help)
    else
      pos[#pos + 1] = a
    end
    i = i + 1
  end
  if #pos > (cmd.args or 0) then
    die(2, "%s: unexpected argument %s\n%s", name, pos[(cmd.args or 0) + 1], cmd.help)
  end
  return opts, pos
end

-- The secrets a config holds (source secrets, admin_token): { {setting, value}, ... }.
local function secrets_of(cfg)
  local out = {}
  local function add(where, v)
    if type(v) == "string" and v ~= "" then out[#out + 1] = { where, v } end
  end
  for name, s in pairs(type(cfg.sources) == "table" and cfg.sources or {}) do
    if type(s) == "table" and type(s.secret) == "table" then
      for i, v in ipairs(s.secret) do add(("sources.%s.secret[%d]"):format(name, i), v) end
    elseif type(s) == "table" then
      add(("sources.%s.secret"):format(name), s.secret)
    end
    if type(s) == "table" then add(("sources.%s.password"):format(name), s.password) end
  end
  add("admin_token", cfg.admin_token)
  add("admin_read_token", cfg.admin_read_token)
  return out
end

-- Refuses a config file every user can read when secrets are written in it.
local function check_private(path, cfg)
  local mode = core.mode(path)
  if not mode or mode & 4 == 0 then return end
  local text, found = read_file(path), {}
  for _, s in ipairs(secrets_of(cfg)) do
    if text:find(s[2], 1, true) then found[#found + 1] = s[1] end
  end
  if #found == 0 then return end
  local msg = ("%s is readable by every user and holds secrets (%s): make it private with " ..
    "`chmod 600 %s` (owned by the user certhook runs as), or keep the secrets out of it: " ..
    "secret = os.getenv(\"CF_WEBHOOK_SECRET\")"):format(path, table.concat(found, ", "), path)
  if os.getenv("CERTHOOK_ALLOW_READABLE_SECRETS") == "1" then -- throwaway setups only
    io.stderr:write("certhook: warning: ", msg, "\n")
    return
  end
  die(1, "%s", msg)
end

-- Lua's message about a config file, without the source text it quotes: the token a syntax
-- error is "near" (an unfinished string runs to the end of its line: a secret), and the value
-- of a constant a runtime error names. file:line and the reason stay.
local function config_error(msg)
  msg = tostring(msg)
  msg = msg:gsub(" near '.*$", ""):gsub("%(constant '.-'%)", "(a constant)")
  return msg
end

-- Loads the config file: its globals are the settings. Relative paths in it are relative to
-- the file's directory. Returns the settings table ({} without a file) and the file's path.
local function load_config(path)
  local explicit = path ~= nil
  path = path or "certhook.conf.lua"
  local f = io.open(path, "r")
  if not f then
    if explicit then die(1, "cannot read config %s", path) end
    return {}
  end
  f:close()
  local env = setmetatable({}, { __index = _G })
  local chunk, err = loadfile(path, "t", env)
  if not chunk then die(1, "config: %s", config_error(err)) end
  local ok, err2 = pcall(chunk)
  if not ok then die(1, "config: %s", config_error(err2)) end
  local cfg = {}
  for k, v in pairs(env) do
    if not SETTINGS[k] then
      die(1, "%s: unknown setting %q (settings are listen, admin, admin_token, admin_read_token, handlers, data, " ..
        "tls, sources, delivery, reload, limits, journal, log, metrics, watchdog, pollers; make helper variables local)",
        path, tostring(k))
    end
    cfg[k] = v
  end
  check_private(path, cfg)
  local base = dirname(path)
  cfg.handlers = resolve(base, cfg.handlers)
  cfg.data = resolve(base, cfg.data)
  if type(cfg.tls) == "table" then
    cfg.tls.cert = resolve(base, cfg.tls.cert)
    cfg.tls.key = resolve(base, cfg.tls.key)
  end
  if type(cfg.sources) == "table" then
    for _, s in pairs(cfg.sources) do
      if type(s) == "table" then
        if type(s.public_key) == "table" then
          for i, k in ipairs(s.public_key) do s.public_key[i] = resolve(base, k) end
        else
          s.public_key = resolve(base, s.public_key)
        end
        s.script = resolve(base, s.script)
        if type(s.sns) == "table" then s.sns.signing_cert = resolve(base, s.sns.signing_cert) end
      end
    end
  end
  return cfg, path
end

-- The config with the command's flags applied, and the config file's path (nil: none).
local function settings(opts)
  local cfg, path = load_config(opts.config)
  for _, k in ipairs { "listen", "admin", "handlers", "data" } do
    if opts[k] then cfg[k] = opts[k] end
  end
  for _, k in ipairs { "level", "format" } do
    if opts["log-" .. k] then
      cfg.log = type(cfg.log) == "table" and cfg.log or {}
      cfg.log[k] = opts["log-" .. k]
    end
  end
  return cfg, path
end

-- ---- commands ---------------------------------------------------------------------------------

-- The journal of a command: --data (a directory or a postgresql:// URI), else the config's,
-- else the default.
local function data_dir(cfg)
  return cfg.data or "./certhook-data"
end


COMMANDS.serve = {
  options = { config = true, listen = true, admin = true, handlers = true, data = true,
    ["log-level"] = true, ["log-format"] = true },
  help = [[
usage: certhook serve [--config FILE] [--listen ADDR:PORT] [--admin ADDR:PORT]
                      [--handlers DIR] [--data DIR|URI] [--log-level LEVEL]
                      [--log-format json|text]

Receives webhooks on POST /hooks/<source>, journals every accepted event and runs the
handlers. Admin listener: GET /healthz, /readyz, /metrics, POST /reload. A change in the
handlers directory reloads the handlers; SIGHUP (or `certhook reload`) also rereads the
config. Stops on SIGTERM/SIGINT. Defaults: listen 127.0.0.1:8080, admin 127.0.0.1:9090,
handlers ./handlers, data ./certhook-data. --data postgresql://... shares one journal in
PostgreSQL with every server that names the same database.]],
  run = function(opts)
    local cfg = settings(opts)
    local ok, err = core.serve(cfg, function()
      quiet = true
      local ok2, fresh = pcall(settings, opts)
      quiet = false
      if ok2 then return fresh end
      return nil, type(fresh) == "table" and fresh[3] or tostring(fresh)
    end)
    if not ok then die(1, "serve: %s", err) end
    return 0
  end,
}

COMMANDS.check = {
  options = { config = true, handlers = true, data = true },
  help = [[
usage: certhook check [--config FILE] [--handlers DIR] [--data DIR|URI]

Loads every *.lua of the handlers directory exactly as serve does. Exit 0 and a list of the
handlers, or exit 1 with file:line of every broken file.]],
  run = function(opts)
    local cfg = settings(opts)
    local dir = cfg.handlers or "./handlers"
    local delivery = type(cfg.delivery) == "table" and cfg.delivery or {}
    local reload = type(cfg.reload) == "table" and cfg.reload or {}
    local r, err = core.check(dir, data_dir(cfg), { load_timeout = reload.timeout,
      memory_limit = delivery.memory_limit })
    if not r then
      io.stderr:write(err, "\n")
      return 1
    end
    io.stdout:write(("%s: %d file%s, %d handler%s\n"):format(dir, r.files, r.files == 1 and "" or "s",
      #r.handlers, #r.handlers == 1 and "" or "s"))
    for _, h in ipairs(r.handlers) do io.stdout:write("  ", h, "\n") end
    return 0
  end,
}

-- The provider and Lua script of a payload: --provider and --script, else those of the
-- source named by --source in the config (a Lua provider's script comes from there).
local function provider_of(opts)
  local provider, script = opts.provider, opts.script
  if opts.source and (not provider or (provider == "lua" and not script)) then
    local ok, cfg = pcall(settings, opts)
    local s = ok and type(cfg.sources) == "table" and cfg.sources[opts.source] or nil
    if type(s) == "table" and (not provider or provider == s.provider) then
      provider = s.provider
      script = script or s.script
    end
  end
  if provider == "lua" and not script then
    die(2, "a Lua provider needs its script: --script FILE (or --source NAME of a configured source)")
  end
  return provider, script
end

COMMANDS.normalize = {
  args = 1,
  options = { config = true, provider = true, source = true, ["public-key"] = true, script = true },
  help = [[
usage: certhook normalize FILE|- [--provider P] [--source NAME] [--public-key PEM]
                                [--script LUA] [--config FILE]

Prints the event handlers would receive for a payload (pretty JSON, sorted keys): exactly
what a handler gets, as serve journals and delivers it; a payload that carries several events
prints a list of them. The provider is detected from the payload unless given (or named by
the configured source --source). An IBM {"data": "<JWT>"} body is decoded; its signature is
verified only with --public-key. A Lua provider: --provider lua --script FILE, or --source
NAME of a configured one.]],
  run = function(opts, pos)
    local file = pos[1] or die(2, "normalize: which file? (- reads standard input)")
    local body = read_file(file)
    local provider, script = provider_of(opts)
    local events, err = core.normalize(body, {
      provider = provider, source = opts.source, public_key = opts["public-key"], script = script,
    })
    if not events then die(1, "%s: %s", file, err) end
    local reads = (core.providers()[events[1].provider] or core.providers().lua).settings
    if not opts["public-key"] and table.concat(reads, " "):find("public_key", 1, true) then
      io.stderr:write("note: signature not verified (pass --public-key PEM to verify it)\n")
    end
    io.stdout:write(pretty(#events == 1 and events[1] or events), "\n")
    return 0
  end,
}

COMMANDS.run = {
  options = { config = true, event = true, handlers = true, provider = true, source = true, data = true,
    script = true },
  help = [[
usage: certhook run --event FILE [--handlers DIR] [--provider P] [--source NAME]
                    [--script LUA] [--config FILE] [--data DIR|URI]

Normalizes the payload in FILE and runs every matching handler once, in this process, as
serve would (without retries). certhook.state uses the journal in the data directory.
Exit 1 if a handler failed.]],
  run = function(opts)
    local file = opts.event or die(2, "run: --event FILE is required")
    local cfg = settings(opts)
    local dir = cfg.handlers or "./handlers"
    local delivery = type(cfg.delivery) == "table" and cfg.delivery or {}
    local reload = type(cfg.reload) == "table" and cfg.reload or {}
    local provider, script = provider_of(opts)
    local r, err = core.run(dir, read_file(file), { provider = provider, source = opts.source,
      script = script, data = data_dir(cfg), timeout = delivery.timeout,
      load_timeout = reload.timeout, memory_limit = delivery.memory_limit })
    if not r then die(1, "%s", err) end
    local failed = 0
    for _, ev in ipairs(r.events) do
      if #ev.results == 0 then
        io.stdout:write(("%s (%s): no handler matches\n"):format(ev.event, ev.type))
      end
      for _, res in ipairs(ev.results) do
        if res.ok then
          io.stdout:write(("ok    %s (%.1f ms)\n"):format(res.handler, res.duration * 1000))
        else
          failed = failed + 1
          io.stdout:write(("FAIL  %s: %s\n"):format(res.handler, res.error))
        end
      end
    end
    return failed > 0 and 1 or 0
  end,
}

-- The source a payload goes to: --source, else the configured source of its provider.
local function pick_source(cfg, opts, provider)
  if opts.source then
    return opts.source, type(cfg.sources) == "table" and cfg.sources[opts.source] or nil
  end
  local names = {}
  for name, s in pairs(type(cfg.sources) == "table" and cfg.sources or {}) do
    if type(s) == "table" and s.provider == provider then names[#names + 1] = name end
  end
  table.sort(names)
  if names[1] then return names[1], cfg.sources[names[1]] end
  return provider, nil
end

local function local_address(listen)
  local host, port = (listen or "127.0.0.1:8080"):match("^(.*):(%d+)$")
  if host == "" or host == "0.0.0.0" or host == "*" then host = "127.0.0.1" end
  if host == "[::]" then host = "[::1]" end
  return (host or "127.0.0.1") .. ":" .. (port or "8080")
end

-- Where to reach a running server (listener "listen" or "admin", default address dflt): the
-- server of this config's journal on this machine, as `serve` recorded it (the data
-- directory's certhook.listening; a database's row of that server), else the config's address.
-- Returns the base URL ("http://127.0.0.1:8080") and where it came from, for people.
local function server_url(cfg, listener, dflt)
  local data = data_dir(cfg)
  local servers, err = core.servers(data)
  local note
  if not servers then
    note = ("cannot read where the server of %s listens: %s"):format(data, err)
  end
  for _, s in ipairs(servers or {}) do
    if s.alive then
      local scheme, addr = s[listener]:match("^(%a+)://(.*)$")
      return ("%s://%s"):format(scheme, local_address(addr)), ("the server of %s, pid %d"):format(data, s.pid)
    end
    note = note or ("the server that listened at %s for %s (pid %d) is gone"):format(s[listener], data, s.pid)
  end
  if note then io.stderr:write("certhook: note: ", note, "\n") end
  return "http://" .. local_address(cfg[listener] or dflt),
    ("%s %s; no running server of %s recorded its own"):format(
      cfg[listener] and "the config's" or "the default", listener, data)
end

-- An HTTP request to a running server, or exit 1 naming the URL (and, when it was not given
-- on the command line, where it came from).
local function request_server(req, from)
  local resp, err = api.http.request(req)
  if resp then return resp end
  die(1, "%s: %s%s", req.url, err, from and (" (%s)"):format(from) or "")
end

-- The credentials send sends for provider to source (its settings, as configured: nil when
-- the config has none), in words, and whether there are any: a request without gets a 401,
-- so send says why before it sends and with the 401.
local function credentials(opts, path, name, source, provider)
  if opts.secret then return "--secret", true end
  if opts["sign-key"] then return "a signature by --sign-key " .. opts["sign-key"], true end
  local source_of = ("sources.%s in %s"):format(name, path)
  local reads = " " .. table.concat(core.providers()[provider].settings, " ") .. " "
  if type(source) == "table" and source.insecure == true then
    return ("none: %s is insecure"):format(source_of), true
  elseif type(source) == "table" and (source.secret or source.password) then
    return ("the credentials of %s"):format(source_of), true
  elseif reads:find(" public_key ", 1, true) and not reads:find(" secret ", 1, true) then
    return ("none: %s payloads are signed; --sign-key PRIVATE.pem signs them"):format(provider), false
  elseif type(source) == "table" then
    return ("none: %s sets no secret (when it reads one with os.getenv, that variable must be " ..
      "set here too); --secret S sends one"):format(source_of), false
  elseif path then
    return ("none: %s has no source of provider %s; --source NAME picks one, --secret S sends " ..
      "a secret"):format(path, provider), false
  end
  return "none: no config file (./certhook.conf.lua, or --config FILE) to take the source's " ..
    "secret from; --secret S sends one", false
end

COMMANDS.send = {
  args = 1,
  options = { config = true, url = true, secret = true, source = true, provider = true,
    ["sign-key"] = true, sample = true, data = true },
  help = [[
usage: certhook send FILE [--url URL] [--secret S] [--source NAME] [--provider P]
                     [--sign-key PEM] [--config FILE] [--data DIR|URI]
       certhook send --sample TYPE [--provider P] [...]
       certhook send --sample list [--provider P]

POSTs a payload to a running server, as the provider's client would send it, and prints the
URL (stderr) and the reply; exit 1 unless it is 2xx. The URL defaults to /hooks/<source> at
the server of the config's journal (--data) on this machine, where serve recorded it listens,
else at the config's listen; the provider is detected from the payload, or is the one of
--source; the secret (or Basic credentials) is the source's, sent where that provider sends
it (--secret overrides; without any, a warning says why). --sign-key signs with that private
key (PEM): a bare IBM Certificate Manager payload as an RS256 JWT; an AWS event as an SNS
message (SignatureVersion 2; the source's sns.signing_cert must be the key's certificate).
--sample TYPE sends a fresh sample payload of that canonical type instead of a file
(`--sample list` lists the providers' samples).]],
  run = function(opts, pos)
    local cfg, path = settings(opts)
    local configured = opts.source and type(cfg.sources) == "table" and cfg.sources[opts.source]
    local provider = opts.provider or (type(configured) == "table" and configured.provider) or nil
    local file, body = pos[1], nil
    if opts.sample == "list" then
      local names = {}
      for name, p in pairs(core.providers()) do
        if p.samples and (not provider or provider == name) then names[#names + 1] = name end
      end
      table.sort(names)
      for _, name in ipairs(names) do
        io.stdout:write(name, ": ", table.concat(core.sample(name), " "), "\n")
      end
      return 0
    elseif opts.sample then
      if file then die(2, "send: give a FILE or --sample TYPE, not both") end
      if not provider then
        for name, p in pairs(core.providers()) do
          if p.samples and core.sample(name, opts.sample) and (not provider or name < provider) then
            provider = name -- the first, by name, that has one
          end
        end
        if not provider then die(2, "send: no provider has a sample of %s (see --sample list)", opts.sample) end
      end
      if not core.providers()[provider] then die(2, "send: unknown provider %s", provider) end
      local err
      body, err = core.sample(provider, opts.sample)
      if not body then die(2, "send: %s: %s (see --sample list)", provider, err) end
      file = "--sample " .. opts.sample
    else
      file = file or die(2, "send: which file? (- reads standard input), or --sample TYPE")
      body = read_file(file)
      provider = provider or core.detect(body)
      if not provider then die(1, "%s: cannot tell the provider; pass --provider", file) end
      if not core.providers()[provider] then die(2, "send: unknown provider %s", provider) end
    end
    local name, source = pick_source(cfg, opts, provider)
    local sent, any = credentials(opts, path, name, source, provider)
    if not any then io.stderr:write("certhook: warning: sending no credentials -- ", sent:sub(7), "\n") end
    local headers
    body, headers = core.send(provider, body, source, { secret = opts.secret, sign_key = opts["sign-key"] })
    if not body then die(1, "%s", headers) end
    local url, from = opts.url, nil
    if not url then
      url, from = server_url(cfg, "listen", "127.0.0.1:8080")
      url = ("%s/hooks/%s"):format(url, name)
    end
    io.stderr:write("POST ", url, from and (" (%s)"):format(from) or "", "\n")
    local resp = request_server({ url = url, method = "POST", headers = headers, body = body }, from)
    io.stdout:write(resp.status, " ", resp.body, resp.body:sub(-1) == "\n" and "" or "\n")
    if resp.status == 401 then
      io.stderr:write(("certhook: the server refused the credentials sent: %s. It checks them " ..
        "against its own sources.%s, as it read them when it started or last reloaded (with " ..
        "its environment, not this shell's)\n"):format(sent, name))
    end
    return (resp.status >= 200 and resp.status < 300) and 0 or 1
  end,
}

local STATUSES = { pending = true, running = true, retrying = true, done = true, dead = true }

local function plural(n, word)
  return ("%d %s%s"):format(n, word, n == 1 and "" or "s")
end

-- "3d 4h", "5h 2m", "12m", "-2d 1h" (past): how far t is from now.
local function span(seconds)
  local sign = seconds <= -60 and "-" or "" -- less than a minute either way is "0m"
  seconds = math.abs(seconds)
  local d, h, m = seconds // 86400, seconds % 86400 // 3600, seconds % 3600 // 60
  if d > 0 then return ("%s%dd %dh"):format(sign, d, h) end
  if h > 0 then return ("%s%dh %dm"):format(sign, h, m) end
  return ("%s%dm"):format(sign, m)
end

COMMANDS.certs = {
  options = { config = true, data = true, expiring = true, status = true, limit = true, json = "flag" },
  help = [[
usage: certhook certs [--expiring DAYS] [--status S] [--limit N] [--json] [--config FILE]
                      [--data DIR|URI]

Lists the certificate inventory -- every certificate certhook has heard of, from any provider
or the watchdog -- soonest expiry first: hostname, provider, status (the provider's word), state
(the same for every provider: pending_validation, pending_issuance, pending_deployment, active,
expired, revoked, deleted, failed), when it expires (~: known to a day), the last event and how
long ago it came. --expiring keeps those expiring within DAYS (expired ones included); --status
those with that status or state, in any case (deleted ones only with --status deleted; a value
that is neither a state nor a status seen is bad usage: the known ones are listed); --json
prints one JSON object per certificate and line. Reads the journal, also while servers run.]],
  run = function(opts)
    local cfg = settings(opts)
    local q = {}
    if opts.expiring then
      local days = tonumber(opts.expiring)
      if not days or days < 0 then die(2, "certs: --expiring must be a number of days") end
      q.expiring_within = days * 86400
    end
    q.status = opts.status
    if opts.limit then
      q.limit = math.tointeger(tonumber(opts.limit))
      if not q.limit or q.limit < 1 then die(2, "certs: --limit must be a positive integer") end
    end
    local entries, err = core.certs(data_dir(cfg), q)
    if not entries then die(1, "certs: %s", err) end
    if #entries == 0 and opts.status then -- none: is it a value that could match at all?
      local known, seen = {}, {}
      for _, state in ipairs(core.states) do known[state] = true end
      for _, text in ipairs(core.certs(data_dir(cfg), {}) or {}) do
        local status = cjson.decode(text).status
        if type(status) == "string" and not known[status:lower()] then
          known[status:lower()] = true
          seen[#seen + 1] = status
        end
      end
      if not known[opts.status:lower()] then
        table.sort(seen)
        die(2, "certs: no certificate has the status or state %q (states: %s; other statuses seen: %s)",
          opts.status, table.concat(core.states, ", "), #seen > 0 and table.concat(seen, ", ") or "none")
      end
    end
    if opts.json then
      for _, e in ipairs(entries) do io.stdout:write(e, "\n") end
      return 0
    end
    if #entries == 0 then
      io.stderr:write("no certificates", (opts.expiring or opts.status) and " match" or "", "\n")
      return 0
    end
    local now = os.time()
    local rows = { { "HOSTNAME", "PROVIDER", "STATUS", "STATE", "EXPIRES IN", "LAST EVENT", "AGE" } }
    for _, text in ipairs(entries) do
      local e = cjson.decode(text)
      local function s(v) return (v == nil or v == cjson.null) and "-" or tostring(v) end
      local expires = type(e.expires_at) == "number" and span(e.expires_at - now) or "-"
      if e.expires_at_approximate == true then expires = "~" .. expires end -- known to a day
      local last = s(e.last_type):gsub("^certificate%.", "")
      if type(e.repeats) == "number" and e.repeats > 1 then last = ("%s x%d"):format(last, e.repeats) end
      rows[#rows + 1] = { s(e.hostname ~= cjson.null and e.hostname or e.name), s(e.provider), s(e.status),
        s(e.state), expires, last, type(e.updated_at) == "number" and span(now - e.updated_at) or "-" }
    end
    local widths = {}
    for _, r in ipairs(rows) do
      for i, c in ipairs(r) do widths[i] = math.max(widths[i] or 0, #c) end
    end
    for _, r in ipairs(rows) do
      local out = {}
      for i, c in ipairs(r) do out[i] = i < #r and c .. (" "):rep(widths[i] - #c) or c end
      io.stdout:write(table.concat(out, "  "), "\n")
    end
    return 0
  end,
}

COMMANDS.events = {
  options = { config = true, data = true, status = true, type = true, limit = true, json = "flag" },
  help = [[
usage: certhook events [--status pending|running|retrying|done|dead] [--type PATTERN]
                       [--limit N] [--json] [--config FILE] [--data DIR|URI]

Lists journaled events, newest first, with their deliveries: handler, status, attempts,
last error. --status keeps events with a delivery in that status; --type matches the
canonical or provider type (`*` wildcards). --json prints one JSON object per event and
line. Reads the journal directly, also while a server runs.]],
  run = function(opts)
    local cfg = settings(opts)
    if opts.status and not STATUSES[opts.status] then
      die(2, "events: --status must be pending, running, retrying, done or dead")
    end
    local limit = 50
    if opts.limit then
      limit = math.tointeger(tonumber(opts.limit))
      if not limit or limit < 1 then die(2, "events: --limit must be a positive integer") end
    end
    local events, err = core.events(data_dir(cfg), { status = opts.status, type = opts.type, limit = limit })
    if not events then die(1, "events: %s", err) end
    if opts.json then
      for _, e in ipairs(events) do
        setmetatable(e.deliveries, cjson.array_mt)
        io.stdout:write(cjson.encode(e), "\n")
      end
      return 0
    end
    if #events == 0 then
      io.stderr:write("no events", (opts.status or opts.type) and " match" or "", "\n")
      return 0
    end
    for _, e in ipairs(events) do
      io.stdout:write(("%s  %s  %s  %s  %s\n"):format(api.time.iso8601(e.received_at), e.id, e.type,
        e.hostname or "-", e.state))
      if #e.deliveries == 0 and e.state == "finished" then
        io.stdout:write("    (no handler matched)\n")
      end
      for _, dl in ipairs(e.deliveries) do
        local extra = ""
        if dl.status == "retrying" and dl.next_at then
          extra = "  next " .. api.time.iso8601(dl.next_at)
        end
        if dl.last_error then extra = extra .. "  " .. dl.last_error:gsub("\n.*", "") end
        io.stdout:write(("    %-44s %-9s %s%s\n"):format(dl.handler, dl.status, plural(dl.attempts, "attempt"), extra))
      end
    end
    return 0
  end,
}

-- What a replay of an event does to one of its deliveries, as the journal has it now
-- (journal_request_replay): "runs again", or why not.
local function replay_outcome(dl, handler)
  if handler and dl.handler ~= handler then return nil end
  local was = ("%s, %s"):format(dl.status, plural(dl.attempts, "attempt"))
  if dl.status == "dead" or (handler and dl.status == "done") then
    return "runs again", was
  elseif dl.status == "done" then
    return "not re-run", ("%s; --handler '%s' runs it again"):format(was, dl.handler)
  end
  return "not re-run", was .. ": it is scheduled already and keeps its course"
end

COMMANDS.replay = {
  args = 1,
  options = { config = true, data = true, dead = "flag", handler = true },
  help = [[
usage: certhook replay ID [--handler FILE:PATTERN] [--config FILE] [--data DIR|URI]
       certhook replay --dead [--config FILE] [--data DIR|URI]

Queues deliveries to run again, attempts counted from zero, and prints which. ID: the
deliveries of that event that did not succeed (dead), and any handler that matches it now but
never ran for it; one that succeeded is not re-run unless named: --handler FILE:PATTERN (a
delivery `certhook events` lists) runs that one alone, whatever its status. Deliveries still
retrying keep their schedule. --dead: every dead delivery. A running server picks the request
up within a second (a shared journal: the server that holds the event, or any); otherwise it
runs at the next start.]],
  run = function(opts, pos)
    local cfg = settings(opts)
    local id, handler, data = pos[1], opts.handler, data_dir(cfg)
    if (id == nil) == (opts.dead == nil) then die(2, "replay: give an event ID or --dead") end
    if handler and not id then die(2, "replay: --handler picks a delivery of an event ID") end
    local ev
    if id then
      local events, err = core.events(data, { id = id, limit = 1 })
      if not events then die(1, "replay: %s", err) end
      ev = events[1] or die(1, "replay: no event with id %s in the journal", id)
      local names, named = {}, nil
      for i, dl in ipairs(ev.deliveries) do
        names[i] = dl.handler
        if dl.handler == handler then named = dl end
      end
      if handler and not named then
        die(1, "replay: event %s has no delivery to %s (%s)", id, handler,
          #names > 0 and "its deliveries: " .. table.concat(names, ", ") or "it has none")
      end
      if named and replay_outcome(named, handler) ~= "runs again" then
        die(1, "replay: %s of %s is %s already: it keeps its course", handler, id, named.status)
      end
    end
    local n, err = core.replay(data, id, handler)
    if not n then die(1, "replay: %s", err) end
    if not id then
      io.stdout:write(("queued a replay of %s\n"):format(plural(n, "dead delivery"):gsub("ys$", "ies")))
      return 0
    end
    io.stdout:write(("queued a replay of %s:\n"):format(id))
    for _, dl in ipairs(ev.deliveries) do
      local what, why = replay_outcome(dl, handler)
      if what then io.stdout:write(("  %-10s  %s  (%s)\n"):format(what, dl.handler, why)) end
    end
    if not handler then
      io.stdout:write("  and any handler that matches it now but never ran for it\n")
    end
    return 0
  end,
}

COMMANDS.migrate = {
  options = { config = true, from = true, to = true },
  help = [[
usage: certhook migrate --from DIR --to URI [--config FILE]

Copies the journal of the data directory DIR (SQLite) into the PostgreSQL database URI, in
one transaction: events with their bodies, deliveries with their status, attempts and errors,
certhook.state, the certificate inventory, replay requests and the journal of the replays
asked (when, by whom). The database must hold no
events yet. Stop the server of DIR first (migrate takes its lock); then start the servers
with data = URI: they run whatever was still pending or retrying.]],
  run = function(opts)
    local from = opts.from or die(2, "migrate: --from DIR is required (the data directory)")
    local to = opts.to or die(2, "migrate: --to URI is required (postgresql://...)")
    if not (to:match("^postgresql://") or to:match("^postgres://")) then
      die(2, "migrate: --to must be a postgresql:// URI")
    end
    local counts, err = core.migrate(from, to)
    if not counts then die(1, "migrate: %s", err) end
    io.stdout:write(("copied %s, %s, %s, %s, %s, %s and %s from %s\n"):format(
      plural(counts.events, "event"), plural(counts.deliveries, "delivery"):gsub("ys$", "ies"),
      plural(counts.state, "state key"), plural(counts.once, "certhook.once key"),
      plural(counts.certificates, "certificate"), plural(counts.replays, "replay request"),
      plural(counts.replay_log, "journaled replay"), from))
    return 0
  end,
}

COMMANDS.reload = {
  options = { config = true, admin = true, data = true },
  help = [[
usage: certhook reload [--admin ADDR:PORT] [--config FILE] [--data DIR|URI]

Asks the running server (its admin listener) to reread the config and reload the handlers,
and waits for the outcome: exit 0 with the new generation, or exit 1 with what is wrong
(file:line) -- the server then keeps running what it had. The server is the one of the
config's journal (--data) on this machine, where serve recorded it listens, else at the
config's admin address; --admin names another.]],
  run = function(opts)
    local cfg = settings(opts)
    local url, from = opts.admin and "http://" .. local_address(opts.admin)
    if not url then url, from = server_url(cfg, "admin", "127.0.0.1:9090") end
    url = url .. "/reload"
    local headers = {}
    if type(cfg.admin_token) == "string" then headers.Authorization = "Bearer " .. cfg.admin_token end
    local resp = request_server({ url = url, method = "POST", headers = headers, timeout = 120 },
      from)
    local body = resp.json or {}
    if resp.status == 200 then
      io.stdout:write(("reloaded: generation %s (%s%s)\n"):format(tostring(body.generation), url,
        from and ", " .. from or ""))
      return 0
    end
    die(1, "reload failed: %s", body.message or resp.body)
  end,
}

COMMANDS.version = {
  options = { config = true },
  help = "usage: certhook version [--config FILE]\n\nPrints the versions of certhook and the libraries it uses.",
  run = function()
    io.stdout:write(core.versions(), "\n")
    return 0
  end,
}

function M.main(args)
  local name = args[1]
  if name == nil or name == "-h" or name == "--help" or name == "help" then
    io.stdout:write(USAGE)
    return name and 0 or 2
  end
  local cmd = COMMANDS[name]
  if not cmd then
    io.stderr:write(("certhook: unknown command %q\n\n"):format(name), USAGE)
    return 2
  end
  local rest = table.move(args, 2, #args, 1, {})
  local ok, code = pcall(function()
    local opts, pos = parse_args(cmd, name, rest)
    return cmd.run(opts, pos)
  end)
  if ok then return code end
  if type(code) == "table" and code[1] == Exit then return code[2] end
  io.stderr:write("certhook: internal error: ", tostring(code), "\n")
  return 1
end

return M
