#include "ccurl.h"

#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/evp.h>
#include <string.h>

static int haven_pin_index = -1;

static int haven_verify_pin(int preverified, X509_STORE_CTX *store) {
    (void)preverified;
    // Only the leaf (depth 0) is judged; the chain above it is irrelevant to a pin.
    if (X509_STORE_CTX_get_error_depth(store) != 0) return 1;
    SSL *ssl = X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx());
    if (!ssl) return 0;
    SSL_CTX *ctx = SSL_get_SSL_CTX(ssl);
    const unsigned char *want = SSL_CTX_get_ex_data(ctx, haven_pin_index);
    X509 *cert = X509_STORE_CTX_get_current_cert(store);
    if (!want || !cert) return 0;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (!X509_digest(cert, EVP_sha256(), md, &len) || len != 32) return 0;
    if (memcmp(md, want, 32) != 0) {
        X509_STORE_CTX_set_error(store, X509_V_ERR_CERT_REJECTED);
        return 0;
    }
    X509_STORE_CTX_set_error(store, X509_V_OK);
    return 1;
}

static CURLcode haven_ssl_ctx(CURL *curl, void *sslctx, void *parm) {
    (void)curl;
    SSL_CTX *ctx = (SSL_CTX *)sslctx;
    if (haven_pin_index < 0) haven_pin_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    SSL_CTX_set_ex_data(ctx, haven_pin_index, parm);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, haven_verify_pin);
    return CURLE_OK;
}

CURLcode haven_curl_pin_sha256(CURL *h, const unsigned char *fingerprint) {
    CURLcode rc;
    // libcurl's own chain check would refuse a self-signed host certificate before the pin is
    // consulted; the pin callback takes its place. Host names are irrelevant to an exact pin.
    if ((rc = curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L)) != CURLE_OK) return rc;
    if ((rc = curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 0L)) != CURLE_OK) return rc;
    if ((rc = curl_easy_setopt(h, CURLOPT_SSL_CTX_DATA, (void *)fingerprint)) != CURLE_OK) return rc;
    return curl_easy_setopt(h, CURLOPT_SSL_CTX_FUNCTION, haven_ssl_ctx);
}
