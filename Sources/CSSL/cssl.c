#define _GNU_SOURCE
#include "cssl.h"

#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct haven_tls_server { SSL_CTX *ctx; };
struct haven_tls_conn { SSL *ssl; };

haven_tls_server *haven_tls_server_new(const char *cert_file, const char *key_file, char *error, size_t errlen) {
    // A peer closing mid-write must not kill the whole simulator.
    signal(SIGPIPE, SIG_IGN);
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) { snprintf(error, errlen, "SSL_CTX_new failed"); return NULL; }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        unsigned long e = ERR_get_error();
        snprintf(error, errlen, "cannot load %s / %s: %s", cert_file, key_file, ERR_error_string(e, NULL));
        SSL_CTX_free(ctx);
        return NULL;
    }
    haven_tls_server *s = calloc(1, sizeof *s);
    s->ctx = ctx;
    return s;
}

void haven_tls_server_free(haven_tls_server *server) {
    if (!server) return;
    SSL_CTX_free(server->ctx);
    free(server);
}

haven_tls_conn *haven_tls_accept(haven_tls_server *server, int fd) {
    SSL *ssl = SSL_new(server->ctx);
    if (!ssl) return NULL;
    SSL_set_fd(ssl, fd);
    for (;;) {
        int r = SSL_accept(ssl);
        if (r == 1) break;
        // A signal arriving in the blocking read (a child exiting: SIGCHLD) is no failed handshake.
        int err = SSL_get_error(ssl, r);
        int interrupted = err == SSL_ERROR_SYSCALL && errno == EINTR;
        ERR_clear_error();
        if (interrupted || err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) continue;
        SSL_free(ssl);
        return NULL;
    }
    haven_tls_conn *c = calloc(1, sizeof *c);
    c->ssl = ssl;
    return c;
}

long haven_tls_read(haven_tls_conn *conn, void *buffer, size_t length) {
    int want = length > 1 << 30 ? 1 << 30 : (int)length;
    int n, err;
    for (;;) {
        n = SSL_read(conn->ssl, buffer, want);
        if (n > 0) return n;
        err = SSL_get_error(conn->ssl, n);
        int interrupted = err == SSL_ERROR_SYSCALL && errno == EINTR;
        ERR_clear_error();
        if (!interrupted) break;
    }
    if (err == SSL_ERROR_ZERO_RETURN) return 0;
    // A peer that closes the socket without close_notify is an end of stream too.
    if (err == SSL_ERROR_SYSCALL || err == SSL_ERROR_SSL) return n == 0 ? 0 : -1;
    return -1;
}

int haven_tls_write_all(haven_tls_conn *conn, const void *buffer, size_t length) {
    const char *p = buffer;
    while (length > 0) {
        int chunk = length > 1 << 30 ? 1 << 30 : (int)length;
        int n = SSL_write(conn->ssl, p, chunk);
        if (n <= 0) {
            int interrupted = SSL_get_error(conn->ssl, n) == SSL_ERROR_SYSCALL && errno == EINTR;
            ERR_clear_error();
            if (interrupted) continue;
            return -1;
        }
        p += n;
        length -= (size_t)n;
    }
    return 0;
}

void haven_tls_close(haven_tls_conn *conn) {
    if (!conn) return;
    SSL_shutdown(conn->ssl);
    SSL_free(conn->ssl);
    ERR_clear_error();
    free(conn);
}

int haven_cert_sha256(const char *pem_file, unsigned char *out) {
    FILE *f = fopen(pem_file, "r");
    if (!f) return -1;
    X509 *cert = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    if (!cert) return -1;
    unsigned int len = 0;
    int ok = X509_digest(cert, EVP_sha256(), out, &len);
    X509_free(cert);
    return ok && len == 32 ? 0 : -1;
}

// --- `haven mover` ---

static X509 *haven_x509_from_pem(const char *pem, size_t length) {
    BIO *bio = BIO_new_mem_buf(pem, (int)length);
    if (!bio) return NULL;
    X509 *cert = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    BIO_free(bio);
    return cert;
}

haven_tls_server *haven_tls_server_new_pem(const char *cert_pem, const char *key_pem, char *error, size_t errlen) {
    signal(SIGPIPE, SIG_IGN);
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) { snprintf(error, errlen, "SSL_CTX_new failed"); return NULL; }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    X509 *cert = haven_x509_from_pem(cert_pem, strlen(cert_pem));
    BIO *kb = BIO_new_mem_buf(key_pem, (int)strlen(key_pem));
    EVP_PKEY *key = kb ? PEM_read_bio_PrivateKey(kb, NULL, NULL, NULL) : NULL;
    if (kb) BIO_free(kb);
    int ok = cert && key && SSL_CTX_use_certificate(ctx, cert) == 1 && SSL_CTX_use_PrivateKey(ctx, key) == 1 &&
             SSL_CTX_check_private_key(ctx) == 1;
    X509_free(cert);
    EVP_PKEY_free(key);
    if (!ok) {
        // Never the key text: only what was wrong with it.
        snprintf(error, errlen, "%s", !cert ? "the certificate is not PEM" : !key ? "the private key is not PEM" : "the key does not match the certificate");
        ERR_clear_error();
        SSL_CTX_free(ctx);
        return NULL;
    }
    haven_tls_server *s = calloc(1, sizeof *s);
    s->ctx = ctx;
    return s;
}

struct haven_tls_client { SSL_CTX *ctx; };

haven_tls_client *haven_tls_client_new(char *error, size_t errlen) {
    signal(SIGPIPE, SIG_IGN);
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) { snprintf(error, errlen, "SSL_CTX_new failed"); return NULL; }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    // The pin replaces chain validation (the certificate is self-signed); see haven_tls_peer_sha256.
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    haven_tls_client *c = calloc(1, sizeof *c);
    c->ctx = ctx;
    return c;
}

void haven_tls_client_free(haven_tls_client *client) {
    if (!client) return;
    SSL_CTX_free(client->ctx);
    free(client);
}

haven_tls_conn *haven_tls_connect(haven_tls_client *client, int fd, int *sys_errno) {
    *sys_errno = 0;
    SSL *ssl = SSL_new(client->ctx);
    if (!ssl) return NULL;
    SSL_set_fd(ssl, fd);
    int rc = SSL_connect(ssl);
    if (rc != 1) {
        int saved = errno;
        if (SSL_get_error(ssl, rc) == SSL_ERROR_SYSCALL) *sys_errno = saved ? saved : ECONNRESET;
        ERR_clear_error();
        SSL_free(ssl);
        return NULL;
    }
    haven_tls_conn *c = calloc(1, sizeof *c);
    c->ssl = ssl;
    return c;
}

int haven_tls_peer_sha256(haven_tls_conn *conn, unsigned char *out) {
    X509 *cert = SSL_get1_peer_certificate(conn->ssl);
    if (!cert) return -1;
    unsigned int len = 0;
    int ok = X509_digest(cert, EVP_sha256(), out, &len);
    X509_free(cert);
    return ok && len == 32 ? 0 : -1;
}

static char *haven_bio_text(BIO *bio) {
    char *data = NULL;
    long n = BIO_get_mem_data(bio, &data);
    char *out = malloc((size_t)n + 1);
    if (!out) return NULL;
    memcpy(out, data, (size_t)n);
    out[n] = 0;
    return out;
}

int haven_make_self_signed(const char *common_name, int days, char **cert_pem, char **key_pem, char *error, size_t errlen) {
    *cert_pem = NULL;
    *key_pem = NULL;
    int rc = -1;
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *cert = X509_new();
    BIGNUM *serial = BN_new();
    BIO *cb = BIO_new(BIO_s_mem());
    BIO *kb = BIO_new(BIO_s_mem());
    if (!key || !cert || !serial || !cb || !kb) { snprintf(error, errlen, "out of memory or no EC support"); goto done; }
    X509_set_version(cert, 2);
    if (!BN_rand(serial, 63, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) || !BN_to_ASN1_INTEGER(serial, X509_get_serialNumber(cert))) {
        snprintf(error, errlen, "cannot make a serial number");
        goto done;
    }
    // An hour of slack before now, for clocks that disagree a little.
    X509_gmtime_adj(X509_getm_notBefore(cert), -3600);
    X509_gmtime_adj(X509_getm_notAfter(cert), (long)days * 86400);
    X509_set_pubkey(cert, key);
    X509_NAME *name = X509_get_subject_name(cert);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)common_name, -1, -1, 0);
    X509_set_issuer_name(cert, name);
    if (!X509_sign(cert, key, EVP_sha256())) { snprintf(error, errlen, "cannot sign the certificate"); goto done; }
    if (!PEM_write_bio_X509(cb, cert) || !PEM_write_bio_PrivateKey(kb, key, NULL, NULL, 0, NULL, NULL)) {
        snprintf(error, errlen, "cannot write PEM");
        goto done;
    }
    *cert_pem = haven_bio_text(cb);
    *key_pem = haven_bio_text(kb);
    rc = (*cert_pem && *key_pem) ? 0 : -1;
done:
    ERR_clear_error();
    BIO_free(cb);
    BIO_free(kb);
    BN_free(serial);
    X509_free(cert);
    EVP_PKEY_free(key);
    return rc;
}

int haven_pem_cert_sha256(const char *pem, size_t length, unsigned char *out) {
    X509 *cert = haven_x509_from_pem(pem, length);
    if (!cert) { ERR_clear_error(); return -1; }
    unsigned int len = 0;
    int ok = X509_digest(cert, EVP_sha256(), out, &len);
    X509_free(cert);
    return ok && len == 32 ? 0 : -1;
}

int haven_spawn_add_closefrom(posix_spawn_file_actions_t *actions, int from) {
    return posix_spawn_file_actions_addclosefrom_np(actions, from);
}
