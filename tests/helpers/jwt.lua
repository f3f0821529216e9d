-- RS256 / HS256 tokens for the specs, made with the openssl command line (not with the code
-- under test), and RSA keys generated per test run.
local fs = require "helpers.fs"

local M = {}

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

function M.b64url(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local chars = 2 + (b and 1 or 0) + (c and 1 or 0)
    for j = 1, chars do
      local idx = (n >> (6 * (4 - j))) & 63
      out[#out + 1] = B64:sub(idx + 1, idx + 1)
    end
  end
  return table.concat(out)
end

-- Generates an RSA key pair in dir: returns private.pem, public.pem paths.
function M.keypair(dir, name, bits)
  name = name or "key"
  local priv, pub = dir .. "/" .. name .. ".pem", dir .. "/" .. name .. ".pub.pem"
  local _, err, code = fs.run(("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:%d -out %s && openssl pkey -in %s -pubout -out %s")
    :format(bits or 2048, priv, priv, pub))
  assert(code == 0, err)
  return priv, pub
end

local function sign_input(header, claims)
  return M.b64url(header) .. "." .. M.b64url(claims)
end

-- An RS256 JWT of claims (JSON text) signed with the private key file.
function M.rs256(claims, priv, header)
  local input = sign_input(header or '{"alg":"RS256"}', claims)
  local tmp = os.tmpname()
  fs.write(tmp, input)
  local sig, err, code = fs.run(("openssl dgst -sha256 -sign %s -binary %s"):format(priv, tmp))
  os.remove(tmp)
  assert(code == 0, err)
  return input .. "." .. M.b64url(sig)
end

-- An HS256 JWT with the given secret (e.g. the RSA public key: the alg confusion attack).
function M.hs256(claims, secret)
  local input = sign_input('{"alg":"HS256","typ":"JWT"}', claims)
  local tmp = os.tmpname()
  fs.write(tmp, input)
  local hex = secret:gsub(".", function(c) return ("%02x"):format(c:byte()) end)
  local sig, err, code = fs.run(("openssl dgst -sha256 -mac HMAC -macopt hexkey:%s -binary %s"):format(hex, tmp))
  os.remove(tmp)
  assert(code == 0, err)
  return input .. "." .. M.b64url(sig)
end

function M.none(claims)
  return sign_input('{"alg":"none"}', claims) .. "."
end

-- The body IBM Certificate Manager posts.
function M.body(token)
  return ('{"data":"%s"}'):format(token)
end

return M
