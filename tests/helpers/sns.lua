-- SNS messages for the specs, signed with the openssl command line (not with src/providers/sns.c,
-- the code under test): a test key and self-signed certificate stand in for AWS's.
local cjson = require "cjson"
local fs = require "helpers.fs"

local M = {}

M.CERT_URL = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem"

-- Makes dir/sns.key and dir/sns.pem (the certificate a source's sns.signing_cert names).
function M.keypair(dir)
  local _, err, code = fs.run(("unset LD_PRELOAD; cd '%s' && openssl req -x509 -newkey rsa:2048 -nodes " ..
    "-keyout sns.key -out sns.pem -subj /CN=sns.amazonaws.com -days 2 2>&1"):format(dir))
  assert(code == 0, err)
  return dir .. "/sns.key", dir .. "/sns.pem"
end

-- The fields of m SNS signs, as "Name\nvalue\n" in their order (Subject only when present).
function M.string_to_sign(m)
  local names = m.Type == "Notification" and { "Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type" }
    or { "Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type" }
  local out = {}
  for _, k in ipairs(names) do
    if m[k] then out[#out + 1] = k .. "\n" .. m[k] .. "\n" end
  end
  return table.concat(out)
end

-- The message of fields, SignatureVersion version (1: SHA1withRSA, 2: SHA256withRSA), signed
-- with the key file; SigningCertURL defaults to M.CERT_URL.
function M.message(fields, key, version)
  local m = { SignatureVersion = tostring(version or 2), SigningCertURL = M.CERT_URL }
  for k, v in pairs(fields) do m[k] = v end
  local tbs = os.tmpname()
  fs.write(tbs, M.string_to_sign(m))
  local out, err, code = fs.run(("unset LD_PRELOAD; openssl dgst -%s -sign '%s' '%s' | openssl base64 -A")
    :format(m.SignatureVersion == "1" and "sha1" or "sha256", key, tbs))
  os.remove(tbs)
  assert(code == 0, err)
  m.Signature = out
  return m
end

-- The request SNS makes: its headers and body.
function M.request(m)
  return { ["Content-Type"] = "text/plain; charset=UTF-8", ["x-amz-sns-message-type"] = m.Type,
    ["x-amz-sns-message-id"] = m.MessageId, ["x-amz-sns-topic-arn"] = m.TopicArn }, cjson.encode(m)
end

return M
