#!/bin/sh
# `make run`: serve examples/ (config, handlers) with a demo secret and a demo IBM key pair,
# after printing commands that send sample events. Environment: LISTEN and ADMIN, the
# addresses (make run LISTEN=127.0.0.1:18080 ADMIN=127.0.0.1:19090); DEMO, where the data and
# keys go (build/demo).
set -eu
launcher=$1
root=$(cd "$(dirname "$0")/.." && pwd)
demo=${DEMO:-$root/build/demo}
listen=${LISTEN:-127.0.0.1:8080}
admin=${ADMIN:-127.0.0.1:9090}
mkdir -p "$demo"
if [ ! -f "$demo/ibm-cm.pub.pem" ]; then
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$demo/ibm-cm.key.pem" 2>/dev/null
    openssl pkey -in "$demo/ibm-cm.key.pem" -pubout -out "$demo/ibm-cm.pub.pem"
fi
cat <<MSG

certhook: serving examples/certhook.conf.lua with handlers from examples/handlers/
  webhooks  http://$listen/hooks/cloudflare   (cf-webhook-auth: demo-secret)
            http://$listen/hooks/ibm          (RS256, demo key $demo/ibm-cm.key.pem)
  health    http://$admin/readyz
  journal   $demo/data/certhook.db

Send a sample Cloudflare event from another terminal (a second send answers "duplicate"):

  curl -i -H 'Content-Type: application/json' -H 'cf-webhook-auth: demo-secret' --data-binary @$root/examples/payloads/cloudflare-validation-failed.json http://$listen/hooks/cloudflare

An IBM Certificate Manager callback, signed with the demo key:

  $launcher send $root/examples/payloads/ibm-cert-issued.json --url http://$listen/hooks/ibm --sign-key $demo/ibm-cm.key.pem

Stop with Ctrl-C.

MSG
export CF_WEBHOOK_SECRET=demo-secret IBM_CM_PUBLIC_KEY="$demo/ibm-cm.pub.pem"
exec "$launcher" serve --config "$root/examples/certhook.conf.lua" --data "$demo/data" \
    --listen "$listen" --admin "$admin"
