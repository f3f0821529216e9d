/* base/x509.c: the facts of certificates this test makes with OpenSSL (known names, SANs,
 * serials, dates), of PEM chains and of the DigiCert fixture's leaf; garbage is refused. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "base/x509.h"
#include "tap.h"

#define JAN_2025 1735689600.0 /* 2025-01-01T00:00:00Z */
#define APR_2025 1743465600.0 /* 2025-04-01T00:00:00Z */
#define JAN_2051 2556144000.0 /* 2051-01-01T00:00:00Z: a GeneralizedTime */

struct spec {
    const char *names[6][2];  /* subject entries in the order added: {field, value} */
    const unsigned char *serial;
    size_t nserial;
    long small_serial;        /* when serial is NULL */
    double not_before, not_after;
    const char *san;          /* X509v3 config syntax, or NULL */
};

static EVP_PKEY *ca_key, *leaf_key;
static X509 *ca;

static void die(const char *what)
{
    fprintf(stderr, "test_x509: %s\n", what);
    exit(2);
}

/* A certificate for s signed by `issuer` with issuer_key (itself when issuer is NULL). */
static X509 *make(const struct spec *s, EVP_PKEY *key, X509 *issuer, EVP_PKEY *issuer_key)
{
    X509 *x = X509_new();
    X509_NAME *name = X509_NAME_new();
    X509V3_CTX ctx;
    if (x == NULL || name == NULL)
        die("out of memory");
    X509_set_version(x, 2);
    if (s->serial != NULL) {
        ASN1_INTEGER *i = ASN1_INTEGER_new();
        ASN1_STRING_set(i, s->serial, (int)s->nserial);
        X509_set_serialNumber(x, i);
        ASN1_INTEGER_free(i);
    } else {
        ASN1_INTEGER_set(X509_get_serialNumber(x), s->small_serial);
    }
    for (int i = 0; i < 6 && s->names[i][0] != NULL; i++)
        if (!X509_NAME_add_entry_by_txt(name, s->names[i][0], MBSTRING_UTF8,
                                        (const unsigned char *)s->names[i][1], -1, -1, 0))
            die("subject entry refused");
    X509_set_subject_name(x, name);
    X509_set_issuer_name(x, issuer != NULL ? X509_get_subject_name(issuer) : name);
    X509_NAME_free(name);
    ASN1_TIME_set(X509_getm_notBefore(x), (time_t)s->not_before);
    ASN1_TIME_set(X509_getm_notAfter(x), (time_t)s->not_after);
    X509_set_pubkey(x, key);
    if (s->san != NULL) {
        X509V3_set_ctx(&ctx, issuer != NULL ? issuer : x, x, NULL, NULL, 0);
        X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &ctx, NID_subject_alt_name, s->san);
        if (e == NULL)
            die("subjectAltName refused");
        X509_add_ext(x, e, -1);
        X509_EXTENSION_free(e);
    }
    if (X509_sign(x, issuer_key, EVP_sha256()) == 0)
        die("cannot sign");
    return x;
}

/* The PEM text of x (malloc'd, NUL-terminated); crlf: with CRLF line ends. */
static char *pem_of(X509 *x, int crlf)
{
    BIO *bio = BIO_new(BIO_s_mem());
    char *p, *out;
    long n;
    PEM_write_bio_X509(bio, x);
    n = BIO_get_mem_data(bio, &p);
    out = malloc(2 * (size_t)n + 1);
    size_t k = 0;
    for (long i = 0; i < n; i++) {
        if (crlf && p[i] == '\n')
            out[k++] = '\r';
        out[k++] = p[i];
    }
    out[k] = '\0';
    BIO_free(bio);
    return out;
}

static char *cat(const char *a, const char *b)
{
    char *s = malloc(strlen(a) + strlen(b) + 1);
    strcpy(s, a);
    strcat(s, b);
    return s;
}

static unsigned char *der_of(X509 *x, size_t *n)
{
    unsigned char *der = NULL;
    int len = i2d_X509(x, &der);
    if (len <= 0)
        die("i2d_X509");
    *n = (size_t)len;
    return der;
}

/* Lower-case hex of the SHA-256 of x's DER, computed here independently of x509.c. */
static void sha256_hex(X509 *x, char out[65])
{
    size_t n;
    unsigned char *der = der_of(x, &n), md[32];
    unsigned int mdlen = 32;
    EVP_Digest(der, n, md, &mdlen, EVP_sha256(), NULL);
    for (int i = 0; i < 32; i++)
        sprintf(out + 2 * i, "%02x", md[i]);
    OPENSSL_free(der);
}

static int refused(int rc, const struct x509_facts *f, const char *err)
{
    return rc == -1 && err[0] != '\0' && f->domains == NULL && f->ndomains == 0 &&
           f->subject[0] == '\0';
}

static void leaf_checks(const char *how, const struct x509_facts *f, X509 *leaf)
{
    char fp[65];
    sha256_hex(leaf, fp);
    ok(strcmp(f->subject, "CN=shop.example.com,O=Example Shop GmbH,C=DE") == 0,
       "%s: subject on one line, most specific first: %s", how, f->subject);
    ok(strcmp(f->issuer, "CN=certhook Test CA,O=certhook tests") == 0, "%s: issuer: %s", how,
       f->issuer);
    ok(strcmp(f->serial_number, "8a0b0c0d0e0f00112233445566778899") == 0,
       "%s: serial in lower-case hex without the DER sign byte: %s", how, f->serial_number);
    ok(strcmp(f->fingerprint_sha256, fp) == 0, "%s: SHA-256 fingerprint of the DER", how);
    ok(f->not_before == JAN_2025 && f->not_after == APR_2025, "%s: validity %.0f .. %.0f", how,
       f->not_before, f->not_after);
    ok(f->ndomains == 3 && strcmp(f->domains[0], "shop.example.com") == 0 &&
           strcmp(f->domains[1], "www.shop.example.com") == 0 &&
           strcmp(f->domains[2], "*.cdn.example.com") == 0,
       "%s: the DNS subjectAltNames in order, without the IP and e-mail ones (%zu)", how,
       f->ndomains);
}

/* The PEM of data.certificate_chain[1] (Lua's first) in the DigiCert fixture, JSON escapes
 * undone; NULL when the file cannot be read. Specs and this test run from the tree's top. */
static char *fixture_leaf(void)
{
    FILE *fp = fopen("tests/fixtures/digicert/certificate_issued.json", "rb");
    static char text[65536];
    size_t n;
    char *begin, *end, *out, *o;
    if (fp == NULL)
        return NULL;
    n = fread(text, 1, sizeof text - 1, fp);
    fclose(fp);
    text[n] = '\0';
    if ((begin = strstr(text, "-----BEGIN CERTIFICATE-----")) == NULL ||
        (end = strstr(begin, "-----END CERTIFICATE-----")) == NULL)
        return NULL;
    end += strlen("-----END CERTIFICATE-----");
    o = out = malloc((size_t)(end - begin) + 2);
    for (const char *p = begin; p < end; p++) {
        if (p[0] == '\\' && p[1] == 'r') {
            *o++ = '\r';
            p++;
        } else if (p[0] == '\\' && p[1] == 'n') {
            *o++ = '\n';
            p++;
        } else {
            *o++ = *p;
        }
    }
    *o++ = '\n';
    *o = '\0';
    return out;
}

int main(void)
{
    static const unsigned char serial[] = {0x8a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x00, 0x11,
                                           0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99};
    const struct spec ca_spec = {
        .names = {{"O", "certhook tests"}, {"CN", "certhook Test CA"}},
        .small_serial = 1, .not_before = JAN_2025, .not_after = JAN_2051,
    };
    const struct spec leaf_spec = {
        .names = {{"C", "DE"}, {"O", "Example Shop GmbH"}, {"CN", "shop.example.com"}},
        .serial = serial, .nserial = sizeof serial, .not_before = JAN_2025, .not_after = APR_2025,
        .san = "DNS:shop.example.com,IP:192.0.2.1,DNS:www.shop.example.com,"
               "email:ops@example.com,DNS:*.cdn.example.com",
    };
    /* "CN=t," + three "OU=<60 x>," + "OU=" = 200 bytes; then 54 ASCII bytes and a two-byte
     * character at offsets 254-255: a cut at 255 bytes must drop that whole character. */
    char ou60[3][61], ou_cut[64];
    for (int i = 0; i < 3; i++) {
        memset(ou60[i], 'b' + i, 60);
        ou60[i][60] = '\0';
    }
    memset(ou_cut, 'a', 54);
    strcpy(ou_cut + 54, "\xc3\xa9\xc3\xa9\xc3\xa9");
    const struct spec long_spec = {
        .names = {{"OU", ou_cut}, {"OU", ou60[2]}, {"OU", ou60[1]}, {"OU", ou60[0]}, {"CN", "t"}},
        .small_serial = -255, .not_before = JAN_2025, .not_after = JAN_2051,
    };
    struct x509_facts f;
    char err[256];
    size_t dern;
    int rc;

    ca_key = EVP_EC_gen("P-256");
    leaf_key = EVP_EC_gen("P-256");
    if (ca_key == NULL || leaf_key == NULL)
        die("cannot make keys");
    ca = make(&ca_spec, ca_key, NULL, ca_key);
    X509 *leaf = make(&leaf_spec, leaf_key, ca, ca_key);
    X509 *longname = make(&long_spec, leaf_key, NULL, leaf_key);
    char *leaf_pem = pem_of(leaf, 0), *leaf_crlf = pem_of(leaf, 1), *ca_pem = pem_of(ca, 0);
    unsigned char *der = der_of(leaf, &dern);

    rc = x509_facts_pem(leaf_pem, strlen(leaf_pem), &f, err, sizeof err);
    ok(rc == 0, "a PEM certificate parses (%s)", rc == 0 ? "ok" : err);
    leaf_checks("PEM", &f, leaf);
    x509_facts_free(&f);
    ok(f.domains == NULL && f.ndomains == 0, "x509_facts_free zeroes the facts");
    x509_facts_free(&f);

    rc = x509_facts_der(der, dern, &f, err, sizeof err);
    ok(rc == 0, "the same certificate in DER parses (%s)", rc == 0 ? "ok" : err);
    leaf_checks("DER", &f, leaf);
    x509_facts_free(&f);

    rc = x509_facts_pem(leaf_crlf, strlen(leaf_crlf), &f, err, sizeof err);
    ok(rc == 0 && f.ndomains == 3 && f.not_after == APR_2025,
       "a PEM with CRLF line ends parses (as DigiCert sends them)");
    x509_facts_free(&f);

    /* a chain: the first certificate wins, whichever it is */
    char *chain = cat(leaf_pem, ca_pem), *reversed = cat(ca_pem, leaf_pem);
    rc = x509_facts_pem(chain, strlen(chain), &f, err, sizeof err);
    ok(rc == 0 && strcmp(f.subject, "CN=shop.example.com,O=Example Shop GmbH,C=DE") == 0,
       "leaf + CA: the leaf's facts");
    x509_facts_free(&f);
    rc = x509_facts_pem(reversed, strlen(reversed), &f, err, sizeof err);
    ok(rc == 0 && strcmp(f.subject, "CN=certhook Test CA,O=certhook tests") == 0,
       "CA + leaf: the CA's facts");
    ok(rc == 0 && f.ndomains == 1 && strcmp(f.domains[0], "certhook Test CA") == 0,
       "without subjectAltNames the CN is the one domain");
    ok(rc == 0 && f.not_after == JAN_2051, "a GeneralizedTime notAfter (2051): %.0f",
       f.not_after);
    ok(rc == 0 && strcmp(f.serial_number, "01") == 0, "serial 1 is \"01\": %s", f.serial_number);
    x509_facts_free(&f);

    /* a key block before the certificate is skipped; text around PEM blocks is ignored */
    BIO *kb = BIO_new(BIO_s_mem());
    char *kp;
    PEM_write_bio_PrivateKey(kb, leaf_key, NULL, NULL, 0, NULL, NULL);
    long kn = BIO_get_mem_data(kb, &kp);
    char *keyfirst = malloc((size_t)kn + strlen(leaf_pem) + 32);
    sprintf(keyfirst, "bundle:\n%.*s%s", (int)kn, kp, leaf_pem);
    rc = x509_facts_pem(keyfirst, strlen(keyfirst), &f, err, sizeof err);
    ok(rc == 0 && f.ndomains == 3, "a key block before the certificate is skipped");
    x509_facts_free(&f);
    BIO_free(kb);

    /* n bounds the text: the second certificate is out of reach */
    rc = x509_facts_pem(chain, strlen(leaf_pem) - 30, &f, err, sizeof err);
    ok(refused(rc, &f, err), "n cuts the PEM short: refused (%s)", err);
    x509_facts_free(&f);

    rc = x509_facts_pem((const char *)"", 0, &f, err, sizeof err);
    ok(refused(rc, &f, err), "empty text refused (%s)", err);
    err[0] = '\0';
    rc = x509_facts_pem("hello", 5, &f, err, sizeof err);
    ok(refused(rc, &f, err), "text without PEM refused (%s)", err);
    const char *bad64 =
        "-----BEGIN CERTIFICATE-----\nMIIB!!notbase64$$\n-----END CERTIFICATE-----\n";
    err[0] = '\0';
    rc = x509_facts_pem(bad64, strlen(bad64), &f, err, sizeof err);
    ok(refused(rc, &f, err), "a PEM block of garbage refused (%s)", err);
    const char *notcert =
        "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n";
    err[0] = '\0';
    rc = x509_facts_pem(notcert, strlen(notcert), &f, err, sizeof err);
    ok(refused(rc, &f, err), "a PEM block holding no certificate refused (%s)", err);
    err[0] = '\0';
    rc = x509_facts_pem(ca_pem, strlen(ca_pem) / 2, &f, err, sizeof err);
    ok(refused(rc, &f, err), "half a PEM refused (%s)", err);
    err[0] = '\0';
    rc = x509_facts_der(der, dern - 1, &f, err, sizeof err);
    ok(refused(rc, &f, err), "DER one byte short refused (%s)", err);
    unsigned char *longer = malloc(dern + 1);
    memcpy(longer, der, dern);
    longer[dern] = 0;
    err[0] = '\0';
    rc = x509_facts_der(longer, dern + 1, &f, err, sizeof err);
    ok(refused(rc, &f, err), "DER with a trailing byte refused (%s)", err);
    err[0] = '\0';
    rc = x509_facts_der((const unsigned char *)"\x30\x03\x02\x01\x01", 5, &f, err, sizeof err);
    ok(refused(rc, &f, err), "DER of another structure refused (%s)", err);
    err[0] = '\0';
    rc = x509_facts_der((const unsigned char *)"", 0, &f, err, sizeof err);
    ok(refused(rc, &f, err), "empty DER refused (%s)", err);
    ok(ERR_peek_error() == 0, "refusals leave OpenSSL's error queue empty");

    /* a subject over 255 bytes is cut where a character starts; a negative serial */
    unsigned char *longder = der_of(longname, &dern);
    rc = x509_facts_der(longder, dern, &f, err, sizeof err);
    ok(rc == 0 && strlen(f.subject) == 254 && f.subject[253] == 'a',
       "a long subject is cut before a character it cannot hold whole (%zu bytes)",
       strlen(f.subject));
    ok(rc == 0 && strncmp(f.subject, "CN=t,OU=bbb", 11) == 0, "  and starts as it should");
    ok(rc == 0 && strcmp(f.serial_number, "-ff") == 0, "a negative serial: %s", f.serial_number);
    x509_facts_free(&f);

    /* the fixture's leaf, made with openssl (tests/fixtures/digicert/mkchain.sh) */
    char *fixture = fixture_leaf();
    ok(fixture != NULL, "tests/fixtures/digicert/certificate_issued.json holds a PEM");
    rc = fixture != NULL ? x509_facts_pem(fixture, strlen(fixture), &f, err, sizeof err) : -1;
    ok(rc == 0 && f.ndomains == 2 && strcmp(f.domains[0], "shop.example.com") == 0 &&
           strcmp(f.domains[1], "www.shop.example.com") == 0,
       "the DigiCert fixture's leaf: shop.example.com, www.shop.example.com");
    ok(rc == 0 && strcmp(f.issuer, "CN=certhook Test Intermediate CA,O=certhook tests") == 0,
       "  issued by the fixture's intermediate: %s", f.issuer);
    ok(rc == 0 && f.not_before == 1735689600.0 && f.not_after == 1743465599.0,
       "  valid 2025-01-01T00:00:00Z .. 2025-03-31T23:59:59Z");
    x509_facts_free(&f);

    free(fixture);
    free(longer);
    free(keyfirst);
    free(chain);
    free(reversed);
    free(leaf_pem);
    free(leaf_crlf);
    free(ca_pem);
    OPENSSL_free(der);
    OPENSSL_free(longder);
    X509_free(leaf);
    X509_free(longname);
    X509_free(ca);
    EVP_PKEY_free(ca_key);
    EVP_PKEY_free(leaf_key);
    return done();
}
