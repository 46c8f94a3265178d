/*
 * The ceiling for per-packet AEAD on this machine: exactly the EVP calls one ESP packet needs,
 * in a C loop, with the key set once (one EVP_CIPHER_CTX per direction, as the native path
 * keeps per SA). Per packet: a new IV (salt ‖ 8-byte counter), 8 bytes of AAD (SPI ‖ seq),
 * the payload, final, and the tag (get on encrypt, set and verify on decrypt).
 *
 * Built and run by benchmarks/datapath.py in the same run as the Python-level measurements.
 * Usage: evp_ceiling {aes-128-gcm|chacha20-poly1305} {enc|dec} SIZE COUNT REPEAT
 * Prints the best rate in packets per second.
 */
#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    /* CPU time of this process: on a shared machine, time spent descheduled is not counted
     * (benchmarks/datapath.py measures the Python side the same way). */
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: %s ALG enc|dec SIZE COUNT REPEAT\n", argv[0]);
        return 2;
    }
    const EVP_CIPHER *c = EVP_CIPHER_fetch(NULL, argv[1], NULL);
    int enc = !strcmp(argv[2], "enc");
    int size = atoi(argv[3]);
    long count = atol(argv[4]);
    int repeat = atoi(argv[5]);
    if (!c || size <= 0 || count <= 0) return 2;
    unsigned char key[32] = {1, 2, 3}, nonce[12] = {9}, aad[8] = {0xc0}, tag[16];
    unsigned char *in = calloc(1, (size_t)size + 16), *out = calloc(1, (size_t)size + 16);
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int l;
    /* A valid ciphertext and tag for the decrypt loop (the same nonce every time: the cost is
     * what is measured; a real receiver's nonces differ, which costs the same). */
    EVP_EncryptInit_ex(ctx, c, NULL, key, nonce);
    EVP_EncryptUpdate(ctx, NULL, &l, aad, 8);
    EVP_EncryptUpdate(ctx, out, &l, in, size);
    EVP_EncryptFinal_ex(ctx, out + l, &l);
    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, 16, tag);
    if (!enc) {
        memcpy(in, out, (size_t)size);
        EVP_DecryptInit_ex(ctx, c, NULL, key, NULL);
    }
    double best = 0;
    for (int r = 0; r < repeat; r++) {
        double t0 = now();
        for (long i = 0; i < count; i++) {
            if (enc) {
                memcpy(nonce + 4, &i, 8);
                EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, nonce);
                EVP_EncryptUpdate(ctx, NULL, &l, aad, 8);
                EVP_EncryptUpdate(ctx, out, &l, in, size);
                EVP_EncryptFinal_ex(ctx, out + l, &l);
                EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, 16, tag);
            } else {
                EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, nonce);
                EVP_DecryptUpdate(ctx, NULL, &l, aad, 8);
                EVP_DecryptUpdate(ctx, out, &l, in, size);
                EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, 16, tag);
                if (EVP_DecryptFinal_ex(ctx, out + l, &l) <= 0) {
                    fprintf(stderr, "tag failure\n");
                    return 1;
                }
            }
        }
        double rate = count / (now() - t0);
        if (rate > best) best = rate;
    }
    printf("%.0f\n", best);
    return 0;
}
