// Thin, typed wrappers for libcurl's variadic setters, which Swift cannot call, and a
// certificate-fingerprint check that runs inside the TLS handshake (before any byte of the
// request, and so the password, is sent).
#ifndef HAVEN_CCURL_H
#define HAVEN_CCURL_H

#include <curl/curl.h>
#include <stddef.h>

static inline CURLcode haven_curl_setopt_long(CURL *h, CURLoption o, long v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode haven_curl_setopt_string(CURL *h, CURLoption o, const char *v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode haven_curl_setopt_pointer(CURL *h, CURLoption o, void *v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode haven_curl_setopt_off(CURL *h, CURLoption o, curl_off_t v) { return curl_easy_setopt(h, o, v); }
static inline CURLcode haven_curl_setopt_slist(CURL *h, CURLoption o, struct curl_slist *v) { return curl_easy_setopt(h, o, v); }

typedef size_t (*haven_curl_data_cb)(char *ptr, size_t size, size_t nmemb, void *userdata);
static inline CURLcode haven_curl_setopt_datacb(CURL *h, CURLoption o, haven_curl_data_cb cb) { return curl_easy_setopt(h, o, cb); }

typedef int (*haven_curl_seek_cb)(void *userdata, curl_off_t offset, int origin);
static inline CURLcode haven_curl_setopt_seekcb(CURL *h, CURLoption o, haven_curl_seek_cb cb) { return curl_easy_setopt(h, o, cb); }

static inline CURLcode haven_curl_getinfo_long(CURL *h, CURLINFO i, long *v) { return curl_easy_getinfo(h, i, v); }
static inline CURLcode haven_curl_getinfo_string(CURL *h, CURLINFO i, char **v) { return curl_easy_getinfo(h, i, v); }

/// Pins the peer certificate by the SHA-256 of its DER encoding (32 bytes). Chain validation is
/// replaced by the pin; the handshake fails when the leaf certificate does not match.
/// `fingerprint` must stay valid as long as the handle is used.
CURLcode haven_curl_pin_sha256(CURL *h, const unsigned char *fingerprint);

#endif
