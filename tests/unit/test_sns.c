/* providers/sns.c: the SNS certificate and subscribe URL rules, the string SNS signs, and
 * SignatureVersion 1 and 2 signatures made and checked with keys and certificates this test
 * makes with OpenSSL (a test CA, its signing certificate, a stranger's; no network). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "providers/sns.h"
#include "tap.h"

static const struct {
    const char *url;
    int want_pem, ok;
} urls[] = {
    {"https://sns.us-west-2.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem", 1, 1},
    {"https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-0123456789abcdef.pem", 1, 1},
    {"https://sns.us-gov-west-1.amazonaws.com/a/b_c-d.pem", 1, 1},
    {"https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription&TopicArn=arn:aws:sns:us-west-2:123456789012:MyTopic&Token=2336412f37", 0, 1},
    {"https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription&Token=1", 1, 0},
    {"http://sns.us-east-1.amazonaws.com/SimpleNotificationService-1.pem", 1, 0},
    {"http://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&Token=1", 0, 0},
    {"HTTPS://sns.us-east-1.amazonaws.com/SimpleNotificationService-1.pem", 1, 0},
    {"ftp://sns.us-east-1.amazonaws.com/SimpleNotificationService-1.pem", 1, 0},
    {"https://sns.us-east-1.amazonaws.com.evil.example/SimpleNotificationService-1.pem", 1, 0},
    {"https://sns.us-east-1.amazonaws.com.evil.example/?Action=ConfirmSubscription", 0, 0},
    {"https://sns.us-east-1.amazonaws.com.cn.evil.example/x.pem", 1, 0},
    {"https://sns.amazonaws.com/SimpleNotificationService-1.pem", 1, 0},
    {"https://sns.amazonaws.com.cn/SimpleNotificationService-1.pem", 1, 0},
    {"https://sns..amazonaws.com/x.pem", 1, 0},
    {"https://sns.us_east_1.amazonaws.com/x.pem", 1, 0},
    {"https://sns.us.east.1.amazonaws.com/x.pem", 1, 0},
    {"https://SNS.US-EAST-1.AMAZONAWS.COM/x.pem", 1, 0},
    {"https://xsns.us-east-1.amazonaws.com/x.pem", 1, 0},
    {"https://evil.example/sns.us-east-1.amazonaws.com/x.pem", 1, 0},
    {"https://evil.example/?sns.us-east-1.amazonaws.com", 0, 0},
    {"https://sns.us-east-1.amazonaws.com@evil.example/x.pem", 1, 0},
    {"https://evil.example@sns.us-east-1.amazonaws.com/x.pem", 1, 0},
    {"https://user:pw@sns.us-east-1.amazonaws.com/x.pem", 1, 0},
    {"https://sns.us-east-1.amazonaws.com/x.pem@evil.example", 1, 0},
    {"https://sns.us-east-1.amazonaws.com\\@evil.example/x.pem", 1, 0},
    {"https://sns.us-east-1.amazonaws.com\\.evil.example/x.pem", 1, 0},
    {"https://sns.us-east-1.amazonaws.com:443/x.pem", 1, 0},
    {"https://sns.us-east-1.amazonaws.com:8443/x.pem", 1, 0},
    {"https://sns.us-east-1.amazonaws.com:/x.pem", 1, 0},
    {"https://sns.us-east-1.amazonaws.com:443/?Action=ConfirmSubscription", 0, 0},
    {"https://sns.us-east-1.amazonaws.com./x.pem", 1, 0},
    {"https://sns.us-east-1.amazonaws.com", 1, 0},
    {"https://sns.us-east-1.amazonaws.com", 0, 0},
    {"https://sns.us-east-1.amazonaws.com?Action=ConfirmSubscription", 0, 0},
    {"https://sns.us-east-1.amazonaws.com/x.txt", 1, 0},
    {"https://sns.us-east-1.amazonaws.com/.pem", 1, 0},
    {"https://sns.us-east-1.amazonaws.com/x.pem?v=1", 1, 0},
    {"https://sns.us-east-1.amazonaws.com/x.pem#frag", 1, 0},
    {"https://sns.us-east-1.amazonaws.com/../x.pem", 1, 0},
    {"https://sns.us-east-1.amazonaws.com/%2e%2e/x.pem", 1, 0},
    {"https://sns.us-east-1.amazonaws.com/x y.pem", 1, 0},
    {"https://sns.us-east-1.amazonaws.com/x.pem\n", 1, 0},
    {" https://sns.us-east-1.amazonaws.com/x.pem", 1, 0},
    {"https://sns.us-east-1.amazonaws.com/\xc3\xa9.pem", 1, 0},
    {"https://[::1]/x.pem", 1, 0},
    {"https://127.0.0.1/x.pem", 1, 0},
    {"", 1, 0},
    {"https://", 0, 0},
};

/* url with bytes outside printable ASCII as \xNN, for the test's description */
static const char *shown(const char *url)
{
    static char out[512];
    size_t k = 0;
    for (const unsigned char *p = (const unsigned char *)url; *p != '\0' && k < sizeof out - 5; p++)
        if (*p < ' ' || *p >= 0x7f)
            k += (size_t)sprintf(out + k, "\\x%02x", *p);
        else
            out[k++] = (char)*p;
    out[k] = '\0';
    return out;
}

static void die(const char *what)
{
    fprintf(stderr, "test_sns: %s\n", what);
    exit(2);
}

/* A certificate for key with subject CN=cn, signed by issuer/issuer_key (self when NULL). */
static X509 *make_cert(const char *cn, EVP_PKEY *key, X509 *issuer, EVP_PKEY *issuer_key)
{
    X509 *x = X509_new();
    X509_NAME *name = X509_NAME_new();
    if (x == NULL || name == NULL)
        die("out of memory");
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), issuer == NULL ? 1 : 2);
    X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (const unsigned char *)"certhook tests",
                               -1, -1, 0);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_subject_name(x, name);
    X509_set_issuer_name(x, issuer != NULL ? X509_get_subject_name(issuer) : name);
    X509_NAME_free(name);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600L * 24 * 365);
    X509_set_pubkey(x, key);
    if (X509_sign(x, issuer_key != NULL ? issuer_key : key, EVP_sha256()) == 0)
        die("cannot sign a certificate");
    return x;
}

static char *pem_cert(X509 *x)
{
    BIO *bio = BIO_new(BIO_s_mem());
    char *p, *out;
    long n;
    PEM_write_bio_X509(bio, x);
    n = BIO_get_mem_data(bio, &p);
    out = strndup(p, (size_t)n);
    BIO_free(bio);
    return out;
}

static char *pem_key(EVP_PKEY *k)
{
    BIO *bio = BIO_new(BIO_s_mem());
    char *p, *out;
    long n;
    PEM_write_bio_PrivateKey(bio, k, NULL, NULL, 0, NULL, NULL);
    n = BIO_get_mem_data(bio, &p);
    out = strndup(p, (size_t)n);
    BIO_free(bio);
    return out;
}

static int verifies(const struct sns_message *m, const char *cert)
{
    char err[256];
    return sns_verify(m, cert, strlen(cert), err, sizeof err) == 0;
}

/* Verification of m refused, with a message. */
static int refused(const struct sns_message *m, const char *cert, char *err, size_t errlen)
{
    err[0] = '\0';
    return sns_verify(m, cert, strlen(cert), err, errlen) == -1 && err[0] != '\0';
}

/* ---- the SNS fixtures: flat JSON objects of strings, read by a parser just big enough ---- */

struct kv {
    char *key[16], *value[16];
    int n;
};

/* A JSON string at *p (after its opening quote), escapes undone; NULL on a parse error. */
static char *json_string(const char **p)
{
    char *out = malloc(strlen(*p) + 1), *o = out;
    const char *s = *p;
    while (*s != '"') {
        if (*s == '\0')
            goto bad;
        if (*s != '\\') {
            *o++ = *s++;
            continue;
        }
        switch (*++s) {
        case 'n': *o++ = '\n'; break;
        case 't': *o++ = '\t'; break;
        case 'r': *o++ = '\r'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case '"': case '\\': case '/': *o++ = *s; break;
        case 'u': {
            unsigned c;
            if (sscanf(s + 1, "%4x", &c) != 1 || c >= 0xD800)
                goto bad;
            if (c < 0x80) {
                *o++ = (char)c;
            } else if (c < 0x800) {
                *o++ = (char)(0xC0 | c >> 6);
                *o++ = (char)(0x80 | (c & 0x3F));
            } else {
                *o++ = (char)(0xE0 | c >> 12);
                *o++ = (char)(0x80 | (c >> 6 & 0x3F));
                *o++ = (char)(0x80 | (c & 0x3F));
            }
            s += 4;
            break;
        }
        default: goto bad;
        }
        s++;
    }
    *o = '\0';
    *p = s + 1;
    return out;
bad:
    free(out);
    return NULL;
}

/* The fixture's members (all strings); 0, or -1 when it is not such an object. */
static int read_fixture(const char *path, struct kv *kv)
{
    static char text[16384];
    FILE *f = fopen(path, "rb");
    size_t n;
    const char *p = text;
    kv->n = 0;
    if (f == NULL)
        return -1;
    n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    while (*p == ' ' || *p == '\n')
        p++;
    if (*p++ != '{')
        return -1;
    for (;;) {
        p += strspn(p, " \n\t\r,");
        if (*p == '}')
            return 0;
        if (*p++ != '"' || kv->n == 16 || (kv->key[kv->n] = json_string(&p)) == NULL)
            return -1;
        p += strspn(p, " \n\t\r:");
        if (*p++ != '"' || (kv->value[kv->n] = json_string(&p)) == NULL) {
            free(kv->key[kv->n]);
            return -1;
        }
        kv->n++;
    }
}

static const char *get(const struct kv *kv, const char *key)
{
    for (int i = 0; i < kv->n; i++)
        if (strcmp(kv->key[i], key) == 0)
            return kv->value[i];
    return NULL;
}

static void kv_free(struct kv *kv)
{
    for (int i = 0; i < kv->n; i++) {
        free(kv->key[i]);
        free(kv->value[i]);
    }
    kv->n = 0;
}

static struct sns_message message_of(const struct kv *kv)
{
    struct sns_message m = {
        .type = get(kv, "Type"), .message = get(kv, "Message"), .message_id = get(kv, "MessageId"),
        .subject = get(kv, "Subject"), .timestamp = get(kv, "Timestamp"),
        .topic_arn = get(kv, "TopicArn"), .subscribe_url = get(kv, "SubscribeURL"),
        .token = get(kv, "Token"), .signature_version = get(kv, "SignatureVersion"),
        .signature = get(kv, "Signature"), .signing_cert_url = get(kv, "SigningCertURL"),
    };
    return m;
}

static const char *const fixtures[] = {
    "sns.Notification.certificate-approaching-expiration.json",
    "sns.Notification.docs-example.json",
    "sns.SubscriptionConfirmation.json",
    "sns.UnsubscribeConfirmation.json",
};

/* The ACM event as EventBridge puts it in Message: compact JSON, one string. */
#define ACM_EVENT                                                                              \
    "{\"version\":\"0\",\"id\":\"9c95e8e4-96a4-ef3f-b739-b6aa5b193afb\",\"detail-type\":"     \
    "\"ACM Certificate Approaching Expiration\",\"source\":\"aws.acm\",\"account\":"           \
    "\"123456789012\",\"time\":\"2020-09-30T06:51:08Z\",\"region\":\"us-east-1\","             \
    "\"resources\":[\"arn:aws:acm:us-east-1:123456789012:certificate/"                         \
    "61f50cd4-45b9-4259-b049-d0a53682fa4b\"],\"detail\":{\"DaysToExpiry\":31,"                 \
    "\"CommonName\":\"example.com\"}}"

int main(void)
{
    char err[256];
    size_t len;
    char *s;

    for (size_t i = 0; i < sizeof urls / sizeof urls[0]; i++) {
        err[0] = '\0';
        int rc = sns_check_url(urls[i].url, urls[i].want_pem, err, sizeof err);
        if (urls[i].ok)
            ok(rc == 0, "%s URL accepted: %s", urls[i].want_pem ? "certificate" : "subscribe",
               shown(urls[i].url));
        else
            ok(rc == -1 && err[0] != '\0', "%s URL refused: %s (%s)",
               urls[i].want_pem ? "certificate" : "subscribe", shown(urls[i].url), err);
    }
    ok(sns_check_url(NULL, 1, err, sizeof err) == -1, "no URL refused");

    /* the string to sign, per message type */
    struct sns_message note = {
        .type = "Notification",
        .message_id = "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        .topic_arn = "arn:aws:sns:us-west-2:123456789012:MyTopic",
        .subject = "My First Message",
        .message = "Hello world!",
        .timestamp = "2012-05-02T00:54:06.655Z",
        .signing_cert_url = "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem",
    };
    s = sns_string_to_sign(&note, &len);
    ok(s != NULL && strcmp(s, "Message\nHello world!\nMessageId\n22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324\n"
                              "Subject\nMy First Message\nTimestamp\n2012-05-02T00:54:06.655Z\n"
                              "TopicArn\narn:aws:sns:us-west-2:123456789012:MyTopic\nType\nNotification\n") == 0 &&
           len == strlen(s),
       "Notification: Message, MessageId, Subject, Timestamp, TopicArn, Type");
    free(s);
    struct sns_message acm = note;
    acm.subject = NULL;
    acm.message = ACM_EVENT;
    s = sns_string_to_sign(&acm, &len);
    ok(s != NULL && strncmp(s, "Message\n{\"version\"", 18) == 0 && strstr(s, "Subject") == NULL &&
           strstr(s, "}}\nMessageId\n22b80b92") != NULL,
       "Notification without Subject: no Subject line; Message verbatim");
    free(s);
    struct sns_message sub = {
        .type = "SubscriptionConfirmation",
        .message_id = "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
        .token = "2336412f37f...",
        .topic_arn = "arn:aws:sns:us-west-2:123456789012:MyTopic",
        .message = "You have chosen to subscribe to the topic arn:aws:sns:us-west-2:123456789012:MyTopic.\n"
                   "To confirm the subscription, visit the SubscribeURL included in this message.",
        .subscribe_url = "https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription&TopicArn=arn:aws:sns:us-west-2:123456789012:MyTopic&Token=2336412f37...",
        .timestamp = "2012-04-26T20:45:04.751Z",
        .subject = "not signed for confirmations",
    };
    s = sns_string_to_sign(&sub, &len);
    ok(s != NULL &&
           strcmp(s, "Message\nYou have chosen to subscribe to the topic arn:aws:sns:us-west-2:123456789012:MyTopic.\n"
                     "To confirm the subscription, visit the SubscribeURL included in this message.\n"
                     "MessageId\n165545c9-2a5c-472c-8df2-7ff2be2b3b1b\n"
                     "SubscribeURL\nhttps://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription&TopicArn=arn:aws:sns:us-west-2:123456789012:MyTopic&Token=2336412f37...\n"
                     "Timestamp\n2012-04-26T20:45:04.751Z\nToken\n2336412f37f...\n"
                     "TopicArn\narn:aws:sns:us-west-2:123456789012:MyTopic\nType\nSubscriptionConfirmation\n") == 0,
       "SubscriptionConfirmation: Message, MessageId, SubscribeURL, Timestamp, Token, TopicArn, Type");
    free(s);
    struct sns_message unsub = sub;
    unsub.type = "UnsubscribeConfirmation";
    s = sns_string_to_sign(&unsub, &len);
    ok(s != NULL && strstr(s, "\nSubscribeURL\n") != NULL && strstr(s, "\nToken\n") != NULL &&
           strstr(s, "Type\nUnsubscribeConfirmation\n") != NULL,
       "UnsubscribeConfirmation: the confirmation fields");
    free(s);
    struct sns_message m = note;
    m.type = "Other";
    ok(sns_string_to_sign(&m, &len) == NULL, "another Type: no string to sign");
    m.type = NULL;
    ok(sns_string_to_sign(&m, &len) == NULL, "no Type: no string to sign");
    m = sub;
    m.token = NULL;
    ok(sns_string_to_sign(&m, &len) == NULL, "a confirmation without Token: none");
    m = note;
    m.timestamp = NULL;
    ok(sns_string_to_sign(&m, &len) == NULL, "a notification without Timestamp: none");

    /* keys and certificates: a test CA, SNS's signing certificate, a stranger's */
    EVP_PKEY *ca_key = EVP_RSA_gen(2048), *sns_key = EVP_RSA_gen(2048),
             *other_key = EVP_RSA_gen(2048), *ec_key = EVP_EC_gen("P-256");
    if (ca_key == NULL || sns_key == NULL || other_key == NULL || ec_key == NULL)
        die("cannot make keys");
    X509 *ca = make_cert("certhook Test SNS CA", ca_key, NULL, NULL);
    X509 *sns = make_cert("sns.amazonaws.com", sns_key, ca, ca_key);
    X509 *other = make_cert("sns.amazonaws.com", other_key, ca, ca_key);
    X509 *ec = make_cert("sns.amazonaws.com", ec_key, ca, ca_key);
    char *sns_pem = pem_cert(sns), *other_pem = pem_cert(other), *ec_pem = pem_cert(ec);
    char *key_pem = pem_key(sns_key), *ec_key_pem = pem_key(ec_key);
    char key_path[] = "/tmp/certhook-test-sns-XXXXXX";
    int fd = mkstemp(key_path);
    if (fd < 0 || write(fd, key_pem, strlen(key_pem)) != (ssize_t)strlen(key_pem) || close(fd) != 0)
        die("cannot write the key file");
    char *chain = malloc(strlen(sns_pem) + strlen(other_pem) + 1);
    strcpy(chain, sns_pem);
    strcat(chain, other_pem);

    struct sns_message *msgs[] = {&note, &acm, &sub, &unsub};
    const char *names[] = {"Notification", "Notification (ACM, no Subject)",
                           "SubscriptionConfirmation", "UnsubscribeConfirmation"};
    for (int version = 1; version <= 2; version++) {
        const char *v = version == 1 ? "1" : "2", *other_v = version == 1 ? "2" : "1";
        for (int i = 0; i < 4; i++) {
            m = *msgs[i];
            char *sig = sns_sign(&m, key_pem, version, err, sizeof err);
            char *sig_path = sns_sign(&m, key_path, version, err, sizeof err);
            ok(sig != NULL && sig_path != NULL && strcmp(sig, sig_path) == 0,
               "v%d %s: signed with the key as text and as a file, the same signature", version,
               names[i]);
            m.signature = sig;
            m.signature_version = v;
            ok(verifies(&m, sns_pem), "v%d %s verifies", version, names[i]);
            ok(verifies(&m, chain), "v%d %s verifies with the certificate first in a chain",
               version, names[i]);
            m.signature_version = other_v;
            ok(refused(&m, sns_pem, err, sizeof err),
               "v%d %s: the signature under SignatureVersion %s refused (%s)", version,
               names[i], other_v, err);
            m.signature_version = v;
            ok(refused(&m, other_pem, err, sizeof err),
               "v%d %s: another key's certificate refused (%s)", version, names[i], err);
            ok(refused(&m, ec_pem, err, sizeof err),
               "v%d %s: a certificate without an RSA key refused (%s)", version, names[i], err);
            m.message = "Hello world?";
            ok(refused(&m, sns_pem, err, sizeof err), "v%d %s: tampered Message refused",
               version, names[i]);
            m = *msgs[i];
            m.signature = sig;
            m.signature_version = v;
            m.topic_arn = "arn:aws:sns:us-west-2:123456789012:OtherTopic";
            ok(refused(&m, sns_pem, err, sizeof err), "v%d %s: tampered TopicArn refused",
               version, names[i]);
            m.topic_arn = msgs[i]->topic_arn;
            m.timestamp = "2012-05-02T00:54:06.656Z";
            ok(refused(&m, sns_pem, err, sizeof err), "v%d %s: tampered Timestamp refused",
               version, names[i]);
            m.timestamp = msgs[i]->timestamp;
            m.message_id = "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf325";
            ok(refused(&m, sns_pem, err, sizeof err), "v%d %s: tampered MessageId refused",
               version, names[i]);
            m.message_id = msgs[i]->message_id;
            if (i < 2) { /* Subject is signed in notifications, when present */
                m.subject = i == 0 ? NULL : "added";
                ok(refused(&m, sns_pem, err, sizeof err), "v%d %s: Subject %s refused",
                   version, names[i], i == 0 ? "removed" : "added");
                m.subject = msgs[i]->subject;
            } else {
                m.subscribe_url = "https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription&Token=other";
                ok(refused(&m, sns_pem, err, sizeof err), "v%d %s: tampered SubscribeURL refused",
                   version, names[i]);
                m.subscribe_url = msgs[i]->subscribe_url;
                m.token = "other";
                ok(refused(&m, sns_pem, err, sizeof err), "v%d %s: tampered Token refused",
                   version, names[i]);
                m.token = msgs[i]->token;
            }
            ok(verifies(&m, sns_pem), "v%d %s: restored, it verifies again", version, names[i]);
            free(sig);
            free(sig_path);
        }
    }

    /* the fixtures (tests/fixtures/aws-acm/sns.*.json, read from the tree's top): their URLs
     * pass the rules, their placeholder signatures do not verify, signed by the test they do */
    for (size_t i = 0; i < sizeof fixtures / sizeof fixtures[0]; i++) {
        char path[256];
        struct kv kv;
        snprintf(path, sizeof path, "tests/fixtures/aws-acm/%s", fixtures[i]);
        if (read_fixture(path, &kv) != 0) {
            ok(0, "%s: a flat JSON object of strings", fixtures[i]);
            kv_free(&kv);
            continue;
        }
        m = message_of(&kv);
        ok(sns_check_url(m.signing_cert_url, 1, err, sizeof err) == 0 &&
               (m.subscribe_url == NULL || sns_check_url(m.subscribe_url, 0, err, sizeof err) == 0),
           "%s: SigningCertURL (and SubscribeURL) pass the rules", fixtures[i]);
        ok(refused(&m, sns_pem, err, sizeof err), "%s: the placeholder Signature refused (%s)",
           fixtures[i], err);
        for (int version = 1; version <= 2; version++) {
            char *fsig = sns_sign(&m, key_path, version, err, sizeof err);
            m.signature = fsig;
            m.signature_version = version == 1 ? "1" : "2";
            ok(fsig != NULL && verifies(&m, sns_pem), "%s: signed as version %d, it verifies",
               fixtures[i], version);
            free(fsig);
        }
        if (strstr(fixtures[i], "approaching") != NULL)
            ok(m.message != NULL && strncmp(m.message, "{\"version\":\"0\"", 14) == 0 &&
                   strstr(m.message, "\"detail-type\":\"ACM Certificate Approaching Expiration\"") != NULL,
               "%s: Message is the EventBridge event as a JSON string", fixtures[i]);
        kv_free(&kv);
    }

    /* the message type is signed: a confirmation's signature does not pass as the other kind */
    m = sub;
    char *sig = sns_sign(&m, key_pem, 2, err, sizeof err);
    m.signature = sig;
    m.signature_version = "2";
    m.type = "UnsubscribeConfirmation";
    ok(refused(&m, sns_pem, err, sizeof err), "a SubscriptionConfirmation's signature as an "
       "UnsubscribeConfirmation refused");
    m.type = "SubscriptionConfirmation";
    ok(verifies(&m, sns_pem), "  and as what it is verifies");

    /* refusals before any cryptography */
    m.signature_version = "3";
    ok(refused(&m, sns_pem, err, sizeof err), "SignatureVersion 3 refused (%s)", err);
    m.signature_version = NULL;
    ok(refused(&m, sns_pem, err, sizeof err), "no SignatureVersion refused (%s)", err);
    m.signature_version = "2";
    m.signature = NULL;
    ok(refused(&m, sns_pem, err, sizeof err), "no Signature refused (%s)", err);
    m.signature = "EXAMPLEpH+...";
    ok(refused(&m, sns_pem, err, sizeof err), "a Signature that is not base64 refused (%s)", err);
    m.signature = "";
    ok(refused(&m, sns_pem, err, sizeof err), "an empty Signature refused (%s)", err);
    char *cut = strndup(sig, strlen(sig) - 4);
    m.signature = cut;
    ok(refused(&m, sns_pem, err, sizeof err), "a Signature cut short refused (%s)", err);
    m.signature = sig;
    ok(refused(&m, "not a certificate", err, sizeof err), "a signing certificate that is not "
       "PEM refused (%s)", err);
    ok(refused(&m, key_pem, err, sizeof err), "a private key for a certificate refused (%s)",
       err);
    m.type = "Notification";
    ok(refused(&m, sns_pem, err, sizeof err), "a confirmation's fields as a Notification "
       "refused (%s)", err);

    /* signing refusals */
    m = note;
    err[0] = '\0';
    ok(sns_sign(&m, key_pem, 3, err, sizeof err) == NULL && err[0] != '\0',
       "signing as version 3 refused (%s)", err);
    err[0] = '\0';
    ok(sns_sign(&m, "/nonexistent/key.pem", 2, err, sizeof err) == NULL && err[0] != '\0',
       "a key file that does not exist refused (%s)", err);
    err[0] = '\0';
    ok(sns_sign(&m, ec_key_pem, 2, err, sizeof err) == NULL && err[0] != '\0',
       "a key that is not RSA refused (%s)", err);
    err[0] = '\0';
    ok(sns_sign(&m, "-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n", 2, err,
                sizeof err) == NULL && err[0] != '\0',
       "a PEM that holds no key refused (%s)", err);
    m.type = "Other";
    err[0] = '\0';
    ok(sns_sign(&m, key_pem, 2, err, sizeof err) == NULL && err[0] != '\0',
       "a message of another Type is not signed (%s)", err);
    ok(ERR_peek_error() == 0, "OpenSSL's error queue is left empty");

    unlink(key_path);
    free(cut);
    free(sig);
    free(chain);
    free(sns_pem);
    free(other_pem);
    free(ec_pem);
    free(key_pem);
    free(ec_key_pem);
    X509_free(ca);
    X509_free(sns);
    X509_free(other);
    X509_free(ec);
    EVP_PKEY_free(ca_key);
    EVP_PKEY_free(sns_key);
    EVP_PKEY_free(other_key);
    EVP_PKEY_free(ec_key);
    return done();
}
