/* CMemhaulTLS: fixed-signature wrappers for OpenSSL macros Swift cannot import. */
#ifndef CMEMHAUL_TLS_H
#define CMEMHAUL_TLS_H
#include <openssl/ssl.h>
#include <openssl/err.h>

/* SSL_CTX_set_min_proto_version / max are macros over SSL_CTX_ctrl. */
int cmh_ssl_ctx_set_tls13_only(SSL_CTX *ctx);
#endif
