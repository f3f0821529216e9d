/*
 * sns.h -- Amazon SNS HTTPS-subscription messages: where their URLs may point, the string
 * SNS signs, signature verification (SignatureVersion 1 and 2) and, for tests and
 * `certhook send`, signing. Lua-free; the aws-acm provider decodes the JSON body into a
 * struct sns_message and fetches the signing certificate (PROVIDERS.md §3.1, DESIGN §5).
 */
#ifndef CERTHOOK_PROVIDERS_SNS_H
#define CERTHOOK_PROVIDERS_SNS_H

#include <stddef.h>

/* The fields of an SNS message body, decoded (JSON escapes undone), borrowed from the caller;
 * NULL when absent. A value holding a NUL byte cannot be represented: refuse such bodies. */
struct sns_message {
    const char *type, *message, *message_id, *subject, *timestamp, *topic_arn, *subscribe_url,
        *token, *signature_version, *signature, *signing_cert_url;
};

/* 0 if url is https://sns.<region>.amazonaws.com/<path> (or ...amazonaws.com.cn), region
 * [a-z0-9-]+, with no port, user info, fragment, backslash, space or control character;
 * want_pem: the path is [A-Za-z0-9._/-] only, ends in ".pem" and has no query (the
 * SigningCertURL); else any path and query (a SubscribeURL). -1 with why in err otherwise. */
int sns_check_url(const char *url, int want_pem, char *err, size_t errlen);

/* The string SNS signs for m, as "Name\nvalue\n" pairs in this order: a Notification
 * Message, MessageId, Subject (only when present), Timestamp, TopicArn, Type; a
 * SubscriptionConfirmation or UnsubscribeConfirmation Message, MessageId, SubscribeURL,
 * Timestamp, Token, TopicArn, Type. Malloc'd (the caller frees it), NUL-terminated, its
 * length in *len; NULL for another Type, a missing field, or no memory. */
char *sns_string_to_sign(const struct sns_message *m, size_t *len);

/* Verifies m->signature (base64) over sns_string_to_sign(m) with the RSA public key of the
 * first certificate in the PEM text cert_pem (n bytes): SignatureVersion "1" is SHA1withRSA,
 * "2" SHA256withRSA (PKCS #1 v1.5). Neither the certificate's chain nor its dates are
 * checked: the caller trusts it because it came from a URL sns_check_url accepted, over
 * verified TLS, or from a configured file. 0 if it verifies, else -1 with why in err. */
int sns_verify(const struct sns_message *m, const char *cert_pem, size_t n, char *err,
               size_t errlen);

/* Signs sns_string_to_sign(m) with the RSA private key in key_pem_or_path (the PEM text when
 * it holds "-----BEGIN", else the path of a PEM file), SHA1withRSA for version 1 and
 * SHA256withRSA for 2; m->signature and m->signature_version are ignored and nothing in m is
 * set. Returns the base64 signature (malloc'd, the caller frees it), or NULL with why in err. */
char *sns_sign(const struct sns_message *m, const char *key_pem_or_path, int version, char *err,
               size_t errlen);

#endif
