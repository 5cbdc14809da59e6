#include "cssl.h"

#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
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
    if (SSL_accept(ssl) != 1) {
        ERR_clear_error();
        SSL_free(ssl);
        return NULL;
    }
    haven_tls_conn *c = calloc(1, sizeof *c);
    c->ssl = ssl;
    return c;
}

long haven_tls_read(haven_tls_conn *conn, void *buffer, size_t length) {
    int want = length > 1 << 30 ? 1 << 30 : (int)length;
    int n = SSL_read(conn->ssl, buffer, want);
    if (n > 0) return n;
    int err = SSL_get_error(conn->ssl, n);
    ERR_clear_error();
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
        if (n <= 0) { ERR_clear_error(); return -1; }
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
