// The few OpenSSL calls the simulator's HTTPS server and `haven mover` need, as plain functions (several are
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

// --- `haven mover`: credentials held in memory, and the client side with a pinned certificate ---

/// A server context from PEM text (certificate, private key); NULL on failure with a message.
haven_tls_server *haven_tls_server_new_pem(const char *cert_pem, const char *key_pem, char *error, size_t errlen);

typedef struct haven_tls_client haven_tls_client;
/// A client context (TLS 1.2 or later). It checks no chain: the caller compares the peer's
/// certificate with its pin (`haven_tls_peer_sha256`) before sending anything.
haven_tls_client *haven_tls_client_new(char *error, size_t errlen);
void haven_tls_client_free(haven_tls_client *client);
/// Runs the TLS handshake as a client over a connected socket; NULL when it fails, with the
/// system error in `*sys_errno` when the socket failed (a reset: ECONNRESET), else 0.
haven_tls_conn *haven_tls_connect(haven_tls_client *client, int fd, int *sys_errno);
/// SHA-256 of the DER form of the peer's certificate, 32 bytes into `out`; 0 on success.
int haven_tls_peer_sha256(haven_tls_conn *conn, unsigned char *out);

/// Makes an EC P-256 key and a self-signed certificate with CN=`common_name`, valid for `days`.
/// On success returns 0 and PEM text in `*cert_pem` and `*key_pem` (free both with `free`).
int haven_make_self_signed(const char *common_name, int days, char **cert_pem, char **key_pem, char *error, size_t errlen);
/// SHA-256 of the DER form of the first certificate in PEM text, 32 bytes into `out`; 0 on success.
int haven_pem_cert_sha256(const char *pem, size_t length, unsigned char *out);


#include <spawn.h>
/// Adds "close every descriptor from `from` up" to spawn file actions (glibc 2.34+): a child
/// inherits nothing else of the parent's, whatever other threads have open.
int haven_spawn_add_closefrom(posix_spawn_file_actions_t *actions, int from);
#endif
