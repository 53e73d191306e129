#define _GNU_SOURCE
#include "CMemhaulTLS.h"
#include <errno.h>
#include <string.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <arpa/inet.h>
#include <sys/socket.h>

int cmh_accept4_cloexec(int fd) { return accept4(fd, NULL, NULL, SOCK_CLOEXEC); }

int cmh_ssl_ctx_set_tls13_only(SSL_CTX *ctx) {
    return cmh_ssl_ctx_set_proto_versions(ctx, TLS1_3_VERSION, TLS1_3_VERSION);
}

int cmh_ssl_ctx_set_proto_versions(SSL_CTX *ctx, int min_version, int max_version) {
    if (SSL_CTX_set_min_proto_version(ctx, min_version) != 1) return 0;
    return SSL_CTX_set_max_proto_version(ctx, max_version);
}

long cmh_ssl_ctx_set_mode(SSL_CTX *ctx, long mode) { return SSL_CTX_set_mode(ctx, mode); }
void cmh_ssl_ctx_set_read_ahead(SSL_CTX *ctx, int yes) { SSL_CTX_set_read_ahead(ctx, yes); }
int cmh_ssl_set_sni(SSL *ssl, const char *name) { return (int)SSL_set_tlsext_host_name(ssl, name); }
int cmh_err_get_reason(unsigned long e) { return ERR_GET_REASON(e); }
void cmh_openssl_free(void *p) { OPENSSL_free(p); }

/* ---- socket BIO with MSG_NOSIGNAL ---- */

struct cmh_sock {
    int fd;
    int last_errno;
    int eof;
    /* Write coalescing: OpenSSL hands the BIO one record (<= 16 KiB) per write;
     * records are gathered here and sent together when it fills or on flush. */
    char *wbuf;
    size_t wcap, wlen;
};

/* One send(MSG_NOSIGNAL), EINTR retried. -1 with last_errno and the retry flag
 * (EAGAIN: SO_SNDTIMEO expired) set on failure. */
static ssize_t cmh_sock_send(BIO *b, struct cmh_sock *s, const char *buf, size_t len) {
    ssize_t n;
    do {
        n = send(s->fd, buf, len, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        s->last_errno = errno;
        if (errno == EAGAIN || errno == EWOULDBLOCK) BIO_set_retry_write(b);
    }
    return n;
}

/* Sends the whole write buffer. 1 when empty, 0 on failure (what was sent is dropped from it). */
static int cmh_sock_drain(BIO *b, struct cmh_sock *s) {
    size_t off = 0;
    int ok = 1;
    while (off < s->wlen) {
        ssize_t n = cmh_sock_send(b, s, s->wbuf + off, s->wlen - off);
        if (n < 0) {
            ok = 0;
            break;
        }
        off += (size_t)n;
    }
    memmove(s->wbuf, s->wbuf + off, s->wlen - off);
    s->wlen -= off;
    return ok;
}

static int cmh_sock_write(BIO *b, const char *buf, size_t len, size_t *written) {
    struct cmh_sock *s = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (s->wcap == 0) {
        ssize_t n = cmh_sock_send(b, s, buf, len);
        if (n < 0) return 0;
        *written = (size_t)n;
        return 1;
    }
    if (!s->wbuf && !(s->wbuf = malloc(s->wcap))) {
        s->last_errno = ENOMEM;
        return 0;
    }
    if (s->wlen + len > s->wcap && !cmh_sock_drain(b, s)) return 0;
    size_t take = len < s->wcap - s->wlen ? len : s->wcap - s->wlen;
    memcpy(s->wbuf + s->wlen, buf, take);
    s->wlen += take;
    *written = take;
    return 1;
}

static int cmh_sock_read(BIO *b, char *buf, size_t len, size_t *readbytes) {
    struct cmh_sock *s = BIO_get_data(b);
    ssize_t n;
    do {
        n = recv(s->fd, buf, len, 0);
    } while (n < 0 && errno == EINTR);
    BIO_clear_retry_flags(b);
    if (n < 0) {
        s->last_errno = errno;
        if (errno == EAGAIN || errno == EWOULDBLOCK) BIO_set_retry_read(b);
        return 0;
    }
    if (n == 0) {
        s->eof = 1;
        return 0;
    }
    *readbytes = (size_t)n;
    return 1;
}

static int cmh_sock_puts(BIO *b, const char *str) {
    size_t w = 0;
    return cmh_sock_write(b, str, strlen(str), &w) ? (int)w : -1;
}

static long cmh_sock_ctrl(BIO *b, int cmd, long num, void *ptr) {
    struct cmh_sock *s = BIO_get_data(b);
    (void)num;
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        /* OpenSSL flushes after handshake flights and alerts (close_notify); writeAll after its data. */
        if (!s || s->wlen == 0) return 1;
        BIO_clear_retry_flags(b);
        return cmh_sock_drain(b, s);
    case BIO_CTRL_WPENDING: return s ? (long)s->wlen : 0;
    case BIO_CTRL_EOF: return s ? s->eof : 1;
    case BIO_C_GET_FD:
        if (ptr) *(int *)ptr = s ? s->fd : -1;
        return s ? s->fd : -1;
    default: return 0;
    }
}

static int cmh_sock_create(BIO *b) {
    BIO_set_init(b, 0);
    BIO_set_data(b, NULL);
    return 1;
}

static int cmh_sock_destroy(BIO *b) {
    struct cmh_sock *s = BIO_get_data(b);
    if (s) free(s->wbuf);
    free(s);
    BIO_set_data(b, NULL);
    return 1;
}

static BIO_METHOD *cmh_sock_method(void) {
    /* Created once; BIO_METHODs are never freed. Racing first calls each create
     * one and one leaks: harmless, and avoided by calling it from a context init. */
    static BIO_METHOD *volatile method = NULL;
    if (method) return method;
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK | BIO_TYPE_DESCRIPTOR, "memhaul socket");
    if (!m) return NULL;
    BIO_meth_set_write_ex(m, cmh_sock_write);
    BIO_meth_set_read_ex(m, cmh_sock_read);
    BIO_meth_set_puts(m, cmh_sock_puts);
    BIO_meth_set_ctrl(m, cmh_sock_ctrl);
    BIO_meth_set_create(m, cmh_sock_create);
    BIO_meth_set_destroy(m, cmh_sock_destroy);
    if (!__sync_bool_compare_and_swap(&method, NULL, m)) BIO_meth_free(m);
    return method;
}

BIO *cmh_bio_new_socket(int fd, size_t write_buffer) {
    BIO_METHOD *m = cmh_sock_method();
    if (!m) return NULL;
    BIO *b = BIO_new(m);
    if (!b) return NULL;
    struct cmh_sock *s = calloc(1, sizeof *s);
    if (!s) {
        BIO_free(b);
        return NULL;
    }
    s->fd = fd;
    s->wcap = write_buffer;
    BIO_set_data(b, s);
    BIO_set_init(b, 1);
    return b;
}

int cmh_ssl_flush(SSL *ssl) { return BIO_flush(SSL_get_wbio(ssl)) == 1; }

int cmh_bio_last_errno(BIO *bio) {
    struct cmh_sock *s = bio ? BIO_get_data(bio) : NULL;
    return s ? s->last_errno : 0;
}

/* ---- keys and certificates ---- */

EVP_PKEY *cmh_keygen_p256(void) {
    return EVP_EC_gen("P-256");
}

int cmh_x509_add_ext(X509 *cert, X509 *issuer, int nid, const char *value) {
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (!ext) return 0;
    int ok = X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
    return ok == 1;
}

int cmh_x509_set_random_serial(X509 *cert) {
    BIGNUM *bn = BN_new();
    if (!bn) return 0;
    int ok = BN_rand(bn, 159, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) == 1 &&
             BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert)) != NULL;
    BN_free(bn);
    return ok;
}

int cmh_x509_subject_cn(X509 *cert, char *buf, int buflen) {
    X509_NAME *name = X509_get_subject_name(cert);
    int idx = name ? X509_NAME_get_index_by_NID(name, NID_commonName, -1) : -1;
    if (idx < 0) return -1;
    ASN1_STRING *data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, idx));
    unsigned char *utf8 = NULL;
    int len = ASN1_STRING_to_UTF8(&utf8, data);
    if (len < 0) return -1;
    if (len >= buflen) {
        OPENSSL_free(utf8);
        return -1;
    }
    memcpy(buf, utf8, (size_t)len);
    buf[len] = 0;
    OPENSSL_free(utf8);
    return len;
}

int cmh_x509_san_count(X509 *cert) {
    GENERAL_NAMES *names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    if (!names) return 0;
    int n = sk_GENERAL_NAME_num(names);
    GENERAL_NAMES_free(names);
    return n;
}

int cmh_x509_san_at(X509 *cert, int i, int *kind, char *buf, int buflen) {
    GENERAL_NAMES *names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    int result = -1;
    *kind = 0;
    if (!names) return -1;
    if (i >= 0 && i < sk_GENERAL_NAME_num(names)) {
        GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, i);
        if (gn->type == GEN_DNS) {
            int len = ASN1_STRING_length(gn->d.dNSName);
            if (len < buflen) {
                memcpy(buf, ASN1_STRING_get0_data(gn->d.dNSName), (size_t)len);
                buf[len] = 0;
                *kind = 1;
                result = len;
            }
        } else if (gn->type == GEN_IPADD) {
            int len = ASN1_STRING_length(gn->d.iPAddress);
            const unsigned char *ip = ASN1_STRING_get0_data(gn->d.iPAddress);
            int af = len == 4 ? AF_INET : len == 16 ? AF_INET6 : 0;
            if (af && inet_ntop(af, ip, buf, (socklen_t)buflen)) {
                *kind = 2;
                result = (int)strlen(buf);
            }
        }
    }
    GENERAL_NAMES_free(names);
    return result;
}

long long cmh_x509_not_after(X509 *cert) {
    struct tm tm;
    if (ASN1_TIME_to_tm(X509_get0_notAfter(cert), &tm) != 1) return 0;
    return (long long)timegm(&tm);
}
