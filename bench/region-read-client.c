/*
 * region-read-client: the small vfio-user client of bench figure vfio.d, the same program against every server.
 *
 *   region-read-client SOCKET REGION OFFSET WARMUP_MS MEASURE_MS
 *
 * Connects to SOCKET, negotiates VERSION 0.2 (JSON capabilities, no twin socket), then sends REGION_READ of 4 bytes
 * at OFFSET of REGION and waits for each reply before the next (one round trip at a time), first for WARMUP_MS
 * untimed, then for MEASURE_MS timed. Every reply is checked (reply type, no error, msg_id, command, size, and the
 * echoed offset, region and count). Prints one line:
 *
 *   value 0x12345678 trips N seconds S rate R
 *
 * where R is round trips per second over the timed part. Any failure prints a reason on stderr and exits 1.
 * Built by the bench with `cc -O2`; it needs nothing but libc.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define HEADER_SIZE 16
#define ACCESS_SIZE 16
#define READ_COUNT 4
#define CMD_VERSION 1
#define CMD_REGION_READ 9
#define TYPE_REPLY 1
#define FLAG_ERROR 0x20
#define MAX_FDS 253

struct header {
    uint16_t msg_id;
    uint16_t command;
    uint32_t size;
    uint32_t flags;
    uint32_t error;
} __attribute__((packed));

struct region_access {
    uint64_t offset;
    uint32_t region;
    uint32_t count;
} __attribute__((packed));

static void fail(const char *what) {
    fprintf(stderr, "region-read-client: %s\n", what);
    exit(1);
}

static void fail_errno(const char *what) {
    fprintf(stderr, "region-read-client: %s: %s\n", what, strerror(errno));
    exit(1);
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void write_all(int fd, const void *bytes, size_t length) {
    const uint8_t *p = bytes;
    while (length > 0) {
        ssize_t n = write(fd, p, length);
        if (n < 0) {
            if (errno == EINTR) continue;
            fail_errno("write");
        }
        p += n;
        length -= (size_t)n;
    }
}

/* Reads exactly `length` bytes; fds that arrive with them (a server may send some with VERSION) are closed. */
static void read_all(int fd, void *bytes, size_t length) {
    uint8_t *p = bytes;
    while (length > 0) {
        char control[CMSG_SPACE(sizeof(int) * MAX_FDS)];
        struct iovec iov = {p, length};
        struct msghdr msg = {0};
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        ssize_t n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
        if (n < 0) {
            if (errno == EINTR) continue;
            fail_errno("recvmsg");
        }
        if (n == 0) fail("the server closed the connection");
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
            size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            int fds[MAX_FDS];
            memcpy(fds, CMSG_DATA(c), count * sizeof(int));
            for (size_t i = 0; i < count; i++) close(fds[i]);
        }
        p += n;
        length -= (size_t)n;
    }
}

static void negotiate(int fd) {
    static const char json[] = "{\"capabilities\":{\"max_msg_fds\":8,\"max_data_xfer_size\":1048576}}";
    uint8_t message[HEADER_SIZE + 4 + sizeof json];
    struct header h = {.msg_id = 0, .command = CMD_VERSION, .size = sizeof message, .flags = 0, .error = 0};
    uint16_t version[2] = {0, 2};
    memcpy(message, &h, HEADER_SIZE);
    memcpy(message + HEADER_SIZE, version, 4);
    memcpy(message + HEADER_SIZE + 4, json, sizeof json); /* with its NUL */
    write_all(fd, message, sizeof message);

    struct header reply;
    read_all(fd, &reply, HEADER_SIZE);
    if ((reply.flags & 0xf) != TYPE_REPLY || reply.command != CMD_VERSION || reply.msg_id != 0) fail("VERSION: not a VERSION reply");
    if (reply.flags & FLAG_ERROR) {
        fprintf(stderr, "region-read-client: VERSION refused with errno %u\n", reply.error);
        exit(1);
    }
    if (reply.size < HEADER_SIZE + 4 || reply.size > 65536) fail("VERSION: bad reply size");
    uint8_t rest[65536];
    read_all(fd, rest, reply.size - HEADER_SIZE);
    uint16_t major;
    memcpy(&major, rest, 2);
    if (major != 0) fail("VERSION: the server speaks another major version");
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: region-read-client SOCKET REGION OFFSET WARMUP_MS MEASURE_MS\n");
        return 2;
    }
    const char *path = argv[1];
    uint32_t region = (uint32_t)strtoul(argv[2], NULL, 0);
    uint64_t offset = strtoull(argv[3], NULL, 0);
    double warmup = atof(argv[4]) / 1000.0;
    double measure = atof(argv[5]) / 1000.0;

    struct sockaddr_un address = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof address.sun_path) fail("the socket path is too long");
    strcpy(address.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) fail_errno("socket");
    if (connect(fd, (struct sockaddr *)&address, sizeof address) != 0) fail_errno("connect");
    negotiate(fd);

    uint8_t request[HEADER_SIZE + ACCESS_SIZE];
    struct header h = {.msg_id = 0, .command = CMD_REGION_READ, .size = sizeof request, .flags = 0, .error = 0};
    struct region_access access = {.offset = offset, .region = region, .count = READ_COUNT};
    memcpy(request + HEADER_SIZE, &access, ACCESS_SIZE);

    uint8_t reply[HEADER_SIZE + ACCESS_SIZE + READ_COUNT];
    uint16_t msg_id = 1;
    uint32_t value = 0;
    unsigned long long trips = 0;
    double start = now_seconds(), timed_from = 0, end = 0;
    int timing = 0;
    for (;;) {
        for (int i = 0; i < 64; i++) {
            h.msg_id = msg_id;
            memcpy(request, &h, HEADER_SIZE);
            write_all(fd, request, sizeof request);
            read_all(fd, reply, HEADER_SIZE);
            struct header r;
            memcpy(&r, reply, HEADER_SIZE);
            if (r.flags & FLAG_ERROR) {
                fprintf(stderr, "region-read-client: REGION_READ refused with errno %u\n", r.error);
                return 1;
            }
            if (r.size != sizeof reply || (r.flags & 0xf) != TYPE_REPLY || r.msg_id != msg_id || r.command != CMD_REGION_READ) {
                fail("REGION_READ: unexpected reply header");
            }
            read_all(fd, reply + HEADER_SIZE, sizeof reply - HEADER_SIZE);
            struct region_access echoed;
            memcpy(&echoed, reply + HEADER_SIZE, ACCESS_SIZE);
            if (echoed.offset != offset || echoed.region != region || echoed.count != READ_COUNT) fail("REGION_READ: the reply does not echo the access");
            memcpy(&value, reply + HEADER_SIZE + ACCESS_SIZE, READ_COUNT);
            msg_id = (uint16_t)(msg_id + 1);
        }
        double now = now_seconds();
        if (!timing) {
            if (now - start >= warmup) {
                timing = 1;
                timed_from = now;
            }
            continue;
        }
        trips += 64;
        if (now - timed_from >= measure) {
            end = now;
            break;
        }
    }
    close(fd);
    double seconds = end - timed_from;
    printf("value 0x%08x trips %llu seconds %.6f rate %.1f\n", value, trips, seconds, (double)trips / seconds);
    return 0;
}
