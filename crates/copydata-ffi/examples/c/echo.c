/*
 * A C program talking to a Rust program through copydata.
 *
 *     echo MAILBOX SECTION
 *
 * 1. Shared memory: opens the named section SECTION the Rust side created
 *    (OpenFileMapping + MapViewOfFile on Windows, shm_open + mmap on
 *    Linux), prints the string Rust wrote at offset 0 and writes an answer
 *    at offset 100.
 * 2. A message: sends "hello from C" with tag 7 to the Rust mailbox MAILBOX
 *    and waits at most 5 s for the reply, like
 *    SendMessageTimeout(WM_COPYDATA); the Rust side answers with the length
 *    as the code and the bytes in capitals. Then, on one connection kept
 *    for them (a copydata_sender), three calls (tags 11 to 13), the
 *    receiver's process id (printed), a post (tag 14, no reply awaited,
 *    like PostMessage), 100000 bytes written straight into shared memory
 *    and sent without a copy (a loan, tag 15) and a section of its own
 *    handed over read-only (tag 16).
 * 3. A mailbox of its own, MAILBOX-c: answers every message with code = tag
 *    and the bytes reversed (reading lent bytes in place, and writing a
 *    reply of 64 KiB or more in place too, in a buffer lent for it), until
 *    a message with tag 0.
 * 4. A named mutex and event shared with the Rust side: finds the mutex
 *    MAILBOX-lock held, waits for the event MAILBOX-go, then takes the
 *    lock (like CreateMutex, SetEvent and WaitForSingleObject).
 * 5. A shared value: opens MAILBOX-stats, which the Rust side shares as a
 *    `Shared<[u64; 2]>` tagged "echo-stats", and under its lock adds 1 to
 *    the first number and sets the second to 7 (the DLL shared data
 *    section of Win32, with a lock).
 *
 * Exits with 0 when all went as expected. Every call returns a status;
 * copydata_last_error() says why one failed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "copydata.h"

static int fail(const char *what, copydata_status st)
{
    fprintf(stderr, "echo: %s: %s (%s)\n", what, copydata_last_error(), copydata_status_name(st));
    return 1;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: echo MAILBOX SECTION\n");
        return 2;
    }
    const char *target = argv[1];
    copydata_status st;

    /* 1. Open the section by name and map 200 bytes at offset 0. */
    copydata_section *section;
    if ((st = copydata_section_open(argv[2], COPYDATA_READ_WRITE, &section)))
        return fail("opening the section", st);
    copydata_view *view;
    st = copydata_section_map(section, 0, 200, COPYDATA_READ_WRITE, &view);
    copydata_section_close(section); /* the view keeps the memory mapped */
    if (st)
        return fail("mapping the section", st);
    char *mem = copydata_view_data(view);
    printf("section says: %.99s\n", mem);
    strcpy(mem + 100, "hello back from C");
    copydata_view_unmap(view);

    /* 2. Send to the Rust mailbox; the reply's bytes are ours to free. */
    const char msg[] = "hello from C";
    int64_t code;
    void *reply;
    size_t reply_len;
    if ((st = copydata_send(target, 7, msg, strlen(msg), 5000, &code, &reply, &reply_len)))
        return fail("sending", st);
    printf("reply %lld: %.*s\n", (long long)code, (int)reply_len, reply ? (const char *)reply : "");
    int ok = code == (int64_t)strlen(msg) && reply_len == strlen(msg) && memcmp(reply, "HELLO FROM C", reply_len) == 0;
    copydata_free(reply);
    if (!ok) {
        fprintf(stderr, "echo: not the reply expected\n");
        return 1;
    }

    /* Many messages: one connection for all, much cheaper than a
     * copydata_send each. They arrive in order. */
    copydata_sender *sender;
    if ((st = copydata_sender_connect(target, 5000, &sender)))
        return fail("connecting", st);
    const char *words[] = {"one", "two", "three"};
    for (int i = 0; i < 3; i++) {
        if ((st = copydata_sender_send(sender, 11 + i, words[i], strlen(words[i]), 5000, &code, NULL, NULL))) {
            copydata_sender_close(sender);
            return fail("sending on the connection", st);
        }
        if (code != (int64_t)strlen(words[i])) {
            copydata_sender_close(sender);
            fprintf(stderr, "echo: reply %lld to \"%s\"\n", (long long)code, words[i]);
            return 1;
        }
    }
    /* Who answered: the process that bound the mailbox (0 if the system
     * cannot name it, or after the connection was dropped). */
    uint32_t receiver;
    if ((st = copydata_sender_receiver_pid(sender, &receiver))) {
        copydata_sender_close(sender);
        return fail("asking for the receiver's pid", st);
    }
    printf("sender: connected to pid %lu\n", (unsigned long)receiver);
    if ((st = copydata_sender_post(sender, 14, "posted", 6, COPYDATA_INFINITE))) {
        copydata_sender_close(sender);
        return fail("posting", st);
    }
    /* Until the receiver has taken the post off its queue (a process that
     * exits right after posting waits for this: on Windows the receiver
     * takes a large post's buffer out of the sending process). */
    if ((st = copydata_sender_flush(sender, 5000))) {
        copydata_sender_close(sender);
        return fail("flushing the post", st);
    }

    /* A loan: a buffer in shared memory, written in place and sent without
     * a copy (the receiver reads it where it is). Once sent, it is not ours
     * to touch. */
    enum { LENT = 100000 };
    void *buffer;
    if ((st = copydata_sender_loan(sender, LENT, 5000, &buffer))) {
        copydata_sender_close(sender);
        return fail("borrowing a buffer", st);
    }
    unsigned char *lent = buffer;
    for (size_t i = 0; i < LENT; i++)
        lent[i] = (unsigned char)(i % 251);
    st = copydata_sender_send_loan(sender, 15, 5000, &code, NULL, NULL);
    if (st) {
        copydata_sender_close(sender);
        return fail("sending the loan", st);
    }
    if (code != LENT) {
        copydata_sender_close(sender);
        fprintf(stderr, "echo: reply %lld to the loan\n", (long long)code);
        return 1;
    }

    /* A section handed over with a message (DuplicateHandle on Windows,
     * SCM_RIGHTS on Linux): anonymous memory written here, given to the
     * receiver read-only, so it can read but not write it. */
    copydata_section *made, *read_only;
    if ((st = copydata_section_anonymous(4096, &made))) {
        copydata_sender_close(sender);
        return fail("creating a section", st);
    }
    if (!(st = copydata_section_map(made, 0, 4096, COPYDATA_READ_WRITE, &view))) {
        strcpy(copydata_view_data(view), "made in C");
        copydata_view_unmap(view);
        st = copydata_section_read_only(made, &read_only);
    }
    if (!st) {
        const copydata_section *with[] = {read_only};
        st = copydata_sender_send_sections(sender, 16, "section", 7, with, 1, 5000, &code, NULL, NULL);
        copydata_section_close(read_only);
    }
    copydata_section_close(made);
    copydata_sender_close(sender);
    if (st)
        return fail("sending a section", st);
    printf("sender: 3 replies, a post, a loan and a section\n");

    /* A mailbox nobody has bound: an error code at once, not a hang. */
    char name[256];
    snprintf(name, sizeof name, "%s-nobody", target);
    if ((st = copydata_send(name, 1, NULL, 0, 5000, NULL, NULL, NULL)) != COPYDATA_STATUS_NOT_FOUND)
        return fail("sending to nobody", st);

    /* 3. Bind MAILBOX-c and answer messages until one has tag 0. */
    snprintf(name, sizeof name, "%s-c", target);
    copydata_mailbox *mailbox;
    if ((st = copydata_mailbox_bind(name, &mailbox)))
        return fail("binding", st);
    printf("ready\n");
    fflush(stdout);
    uint64_t tag;
    do {
        copydata_request *req;
        if ((st = copydata_mailbox_recv(mailbox, 30000, &req))) {
            copydata_mailbox_close(mailbox);
            return fail("receiving", st);
        }
        tag = copydata_request_tag(req);
        /* Lent bytes are read in place; a hostile sender could still change
         * them, which for reversing them does no harm. Others are a copy. */
        size_t len;
        const unsigned char *data = copydata_request_loan(req, &len);
        if (!data)
            data = copydata_request_data(req, &len);
        /* A large reply is written straight into shared memory lent for it,
         * which the sender reads without a copy; a small one is copied
         * (smaller replies travel cheaper in the message itself). */
        void *out = NULL;
        int loaned = len >= 65536 && copydata_request_expects_reply(req) &&
                     copydata_request_loan_reply(req, len, &out) == COPYDATA_STATUS_OK;
        unsigned char *back = loaned ? out : malloc(len ? len : 1);
        if (!back) {
            copydata_request_refuse(req, "out of memory");
            continue;
        }
        for (size_t i = 0; i < len; i++)
            back[i] = data[len - 1 - i];
        /* Answering frees the request (and its data). */
        st = loaned ? copydata_request_reply_loan(req, (int64_t)tag)
                    : copydata_request_reply(req, (int64_t)tag, back, len);
        if (st)
            fprintf(stderr, "echo: replying: %s\n", copydata_last_error());
        if (!loaned)
            free(back);
    } while (tag != 0);
    copydata_mailbox_close(mailbox);

    /* 4. The Rust side holds MAILBOX-lock and sets MAILBOX-go once it has
     * let go of it. */
    copydata_mutex *lock;
    copydata_event *go;
    snprintf(name, sizeof name, "%s-lock", target);
    if ((st = copydata_mutex_open(name, &lock)))
        return fail("opening the mutex", st);
    snprintf(name, sizeof name, "%s-go", target);
    if ((st = copydata_event_create(name, COPYDATA_MANUAL_RESET, &go))) {
        copydata_mutex_close(lock);
        return fail("opening the event", st);
    }
    if ((st = copydata_mutex_lock(lock, 0, NULL)) == COPYDATA_STATUS_TIMED_OUT) {
        printf("lock held elsewhere\n");
        fflush(stdout);
        st = copydata_event_wait(go, 30000);
    } else if (!st) {
        fprintf(stderr, "echo: the lock was free\n");
        st = COPYDATA_STATUS_IO;
    }
    int died = -1;
    if (!st && !(st = copydata_mutex_lock(lock, 30000, &died))) {
        printf("lock taken, owner died %d\n", died);
        st = copydata_mutex_unlock(lock);
    }
    copydata_event_close(go);
    copydata_mutex_close(lock);
    if (st)
        return fail("the mutex and the event", st);

    /* 5. Two numbers the Rust side shares under MAILBOX-stats. */
    copydata_shared *stats;
    snprintf(name, sizeof name, "%s-stats", target);
    if ((st = copydata_shared_open(name, "echo-stats", &stats)))
        return fail("opening the shared value", st);
    if (copydata_shared_size(stats) != 2 * sizeof(uint64_t)) {
        fprintf(stderr, "echo: the shared value has %zu bytes\n", copydata_shared_size(stats));
        copydata_shared_close(stats);
        return 1;
    }
    if (!(st = copydata_shared_lock(stats, 30000, NULL))) {
        uint64_t *numbers = copydata_shared_data(stats);
        printf("shared %llu -> %llu\n", (unsigned long long)numbers[0], (unsigned long long)numbers[0] + 1);
        numbers[0] += 1;
        numbers[1] = 7;
        st = copydata_shared_unlock(stats);
    }
    copydata_shared_close(stats);
    if (st)
        return fail("the shared value", st);
    return 0;
}
