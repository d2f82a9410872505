/*
 * A single-instance C program: the first launch of APP stays running and
 * takes every later launch's arguments; a later launch hands them over
 * and exits with the code the first one answers.
 *
 *     instance APP [ARGS...]
 *
 * The primary prints "primary", then a line per launch
 * ("launch pid=PID theme=THEME cwd=DIR args=A|B|...", THEME being the
 * secondary's environment variable INSTANCE_THEME, forwarded, or "-")
 * and answers with the number of
 * arguments as the code and "ok" as the bytes; a launch whose first
 * argument is "quit" makes it answer 0 and exit. A secondary prints
 * "answer CODE DATA" and exits with CODE.
 *
 * The arguments go as this process's own (argv NULL): copydata reads them
 * from the OS, so on Windows nothing is lost to main's ANSI code page.
 */
#include <stdio.h>
#include <string.h>

#include "copydata.h"

static int fail(const char *what, copydata_status st)
{
    fprintf(stderr, "instance: %s: %s (%s)\n", what, copydata_last_error(), copydata_status_name(st));
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: instance APP [ARGS...]\n");
        return 2;
    }
    (void)argv;
    copydata_instance *primary;
    int32_t code;
    void *answer;
    size_t len;
    /* A later launch also hands over its INSTANCE_THEME, if set. */
    const char *forward[] = {"INSTANCE_THEME"};
    copydata_status st =
        copydata_instance_acquire_env(argv[1], 0, NULL, 1, forward, NULL, 0, 10000, &primary, &code, &answer, &len);
    if (st)
        return fail("acquiring", st);
    if (!primary) {
        /* Forwarded: the primary answered. */
        printf("answer %d %.*s\n", (int)code, (int)len, answer ? (const char *)answer : "");
        copydata_free(answer);
        return code;
    }
    printf("primary\n");
    fflush(stdout);
    for (;;) {
        copydata_launch *launch;
        if ((st = copydata_instance_recv(primary, 30000, &launch))) {
            copydata_instance_close(primary);
            return fail("receiving a launch", st);
        }
        size_t n = copydata_launch_argc(launch);
        const char *cwd = copydata_launch_cwd(launch);
        const char *theme = copydata_launch_env(launch, "INSTANCE_THEME");
        printf("launch pid=%u theme=%s cwd=%s args=", (unsigned)copydata_launch_pid(launch), theme ? theme : "-",
               cwd ? cwd : "-");
        /* The first argument is the app id again, as the secondary's own. */
        for (size_t i = 1; i < n; i++)
            printf("%s%s", i > 1 ? "|" : "", copydata_launch_arg(launch, i));
        printf("\n");
        fflush(stdout);
        int quit = n > 1 && strcmp(copydata_launch_arg(launch, 1), "quit") == 0;
        if ((st = copydata_launch_answer(launch, quit ? 0 : (int32_t)(n - 1), "ok", 2)))
            fprintf(stderr, "instance: answering: %s\n", copydata_last_error());
        if (quit)
            break;
    }
    copydata_instance_close(primary);
    return 0;
}
