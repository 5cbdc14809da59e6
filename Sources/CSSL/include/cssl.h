// The few OpenSSL calls the simulator's HTTPS server needs, as plain functions (several are
// macros in OpenSSL's headers, which Swift cannot call).
#ifndef HAVEN_CSSL_H
#define HAVEN_CSSL_H

#include <stddef.h>

typedef struct haven_tls_server haven_tls_server;
typedef struct haven_tls_conn haven_tls_conn;

/// A server context from PEM files; NULL on failure with a message in `error` (at most `errlen`).
haven_tls_server *haven_tls_server_new(const char *cert_file, const char *key_file, char *error, size_t errlen);
void haven_tls_server_free(haven_tls_server *server);

/// Runs the TLS handshake on an accepted socket; NULL when it fails (the socket is left open).
haven_tls_conn *haven_tls_accept(haven_tls_server *server, int fd);
/// Bytes read (>0), 0 at orderly end, -1 on error.
long haven_tls_read(haven_tls_conn *conn, void *buffer, size_t length);
/// Writes all bytes; 0 on success, -1 on error.
int haven_tls_write_all(haven_tls_conn *conn, const void *buffer, size_t length);
void haven_tls_close(haven_tls_conn *conn);

/// SHA-256 of the DER form of the first certificate in a PEM file, 32 bytes into `out`; 0 on success.
int haven_cert_sha256(const char *pem_file, unsigned char *out);

#endif
