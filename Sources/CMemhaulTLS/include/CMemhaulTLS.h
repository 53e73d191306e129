/* CMemhaulTLS: fixed-signature wrappers for OpenSSL macros Swift cannot import,
 * a send(MSG_NOSIGNAL) socket BIO, and X.509 helpers that are mostly macros. */
#ifndef CMEMHAUL_TLS_H
#define CMEMHAUL_TLS_H
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

/* accept4(fd, NULL, NULL, SOCK_CLOEXEC): glibc declares accept4 only under _GNU_SOURCE. */
int cmh_accept4_cloexec(int fd);

/* SSL_CTX_set_min_proto_version / max are macros over SSL_CTX_ctrl. */
int cmh_ssl_ctx_set_tls13_only(SSL_CTX *ctx);
/* Any range, e.g. TLS1_2_VERSION..TLS1_2_VERSION (tests of refusal). */
int cmh_ssl_ctx_set_proto_versions(SSL_CTX *ctx, int min_version, int max_version);
/* SSL_CTX_set_mode (macro). */
long cmh_ssl_ctx_set_mode(SSL_CTX *ctx, long mode);
/* SSL_CTX_set_read_ahead (macro). */
void cmh_ssl_ctx_set_read_ahead(SSL_CTX *ctx, int yes);
/* SSL_set_tlsext_host_name (macro): SNI. */
int cmh_ssl_set_sni(SSL *ssl, const char *name);
/* ERR_GET_REASON (inline). */
int cmh_err_get_reason(unsigned long e);
/* OPENSSL_free (macro). */
void cmh_openssl_free(void *p);

/* A socket BIO over fd that sends with MSG_NOSIGNAL (no SIGPIPE when the peer
 * has gone), retries EINTR, reports EAGAIN (SO_RCVTIMEO/SO_SNDTIMEO expiry) as
 * a retryable condition, and remembers the last errno. Does not close fd.
 * write_buffer > 0: writes are gathered in a buffer of that many bytes
 * (allocated on first write) and sent when it fills or on BIO_flush;
 * 0: one send per write. */
BIO *cmh_bio_new_socket(int fd, size_t write_buffer);
/* BIO_flush (macro) of the SSL's write BIO: 1 when all gathered bytes were sent. */
int cmh_ssl_flush(SSL *ssl);
/* errno of the last failed send/recv on a cmh socket BIO, 0 if none. */
int cmh_bio_last_errno(BIO *bio);

/* EC P-256 key pair (EVP_EC_gen is a variadic macro). NULL on failure. */
EVP_PKEY *cmh_keygen_p256(void);
/* Adds extension `nid` with config text `value` (X509V3_EXT_conf_nid), issuer may equal cert. 1 on success. */
int cmh_x509_add_ext(X509 *cert, X509 *issuer, int nid, const char *value);
/* 160-bit random positive serial. 1 on success. */
int cmh_x509_set_random_serial(X509 *cert);
/* Subject commonName as UTF-8 into buf; returns its length, -1 if absent or too long. */
int cmh_x509_subject_cn(X509 *cert, char *buf, int buflen);
/* Number of subjectAltName entries. */
int cmh_x509_san_count(X509 *cert);
/* SAN entry i as text (DNS name, or IP address in inet_ntop form) into buf.
 * *kind = 1 DNS, 2 IP, 0 other. Returns the text length or -1. */
int cmh_x509_san_at(X509 *cert, int i, int *kind, char *buf, int buflen);
/* Seconds since the epoch of notAfter, via ASN1_TIME_to_tm. */
long long cmh_x509_not_after(X509 *cert);
#endif
