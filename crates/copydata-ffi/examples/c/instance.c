/*
 * A single-instance C program: the first launch of APP stays running and
 * takes every later launch's arguments; a later launch hands them over
 * and exits with the code the first one answers.
 *
 *     instance APP [ARGS...]
 *
 * A launch forwards ARGS, the arguments after APP, and nothing else: the
 * same arguments `copydata instance APP -- ARGS...` forwards, so either
 * program can be the primary of the other's launches.
 *
 * The primary prints "primary", then a line per later launch
 * ("launch pid=PID theme=THEME cwd=DIR args=A|B|...", THEME being the
 * secondary's environment variable INSTANCE_THEME, forwarded, or "-")
 * and answers with the number of arguments as the code and "ok" as the
 * bytes; a launch whose first argument is "quit" makes it answer 0 and
 * exit. A secondary prints "answer CODE DATA" and exits with CODE.
 *
 * The arguments go as UTF-8 on Windows, where copydata takes that: there
 * they are read from the wide command line (CommandLineToArgvW; link with
 * -lshell32), so nothing is lost to the ANSI code page of main's argv. On
 * Linux they are main's argv, bytes as the OS holds them.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _WIN32
#include <windows.h>
#include <shellapi.h>
#endif

#include "copydata.h"

static int fail(const char *what, copydata_status st)
{
    fprintf(stderr, "instance: %s: %s (%s)\n", what, copydata_last_error(), copydata_status_name(st));
    return 1;
}

/* The arguments after APP: *count of them in *args, released by
 * free_args. Returns 0, or -1 if they cannot be read. */
#ifdef _WIN32
static int forwarded_args(int argc, char **argv, size_t *count, char ***args)
{
    (void)argc;
    (void)argv;
    int n;
    wchar_t **wide = CommandLineToArgvW(GetCommandLineW(), &n);
    if (!wide)
        return -1;
    /* wide[0] is the program, wide[1] APP. */
    size_t m = n > 2 ? (size_t)n - 2 : 0;
    char **out = calloc(m ? m : 1, sizeof *out);
    for (size_t i = 0; out && i < m; i++) {
        int len = WideCharToMultiByte(CP_UTF8, 0, wide[i + 2], -1, NULL, 0, NULL, NULL);
        if (len <= 0 || !(out[i] = malloc((size_t)len)) ||
            !WideCharToMultiByte(CP_UTF8, 0, wide[i + 2], -1, out[i], len, NULL, NULL)) {
            for (size_t j = 0; j <= i; j++)
                free(out[j]);
            free(out);
            out = NULL;
        }
    }
    LocalFree(wide);
    if (!out)
        return -1;
    *count = m;
    *args = out;
    return 0;
}

static void free_args(size_t count, char **args)
{
    for (size_t i = 0; i < count; i++)
        free(args[i]);
    free(args);
}
#else
static int forwarded_args(int argc, char **argv, size_t *count, char ***args)
{
    *count = (size_t)argc - 2;
    *args = argv + 2;
    return 0;
}

static void free_args(size_t count, char **args)
{
    (void)count;
    (void)args;
}
#endif

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: instance APP [ARGS...]\n");
        return 2;
    }
    size_t nargs;
    char **args;
    if (forwarded_args(argc, argv, &nargs, &args)) {
        fprintf(stderr, "instance: cannot read the arguments\n");
        return 1;
    }
    copydata_instance *primary;
    int32_t code;
    void *answer;
    size_t len;
    /* A later launch also hands over its INSTANCE_THEME, if set. */
    const char *forward[] = {"INSTANCE_THEME"};
    copydata_status st = copydata_instance_acquire_env(argv[1], nargs, (const char *const *)args, 1, forward, NULL, 0,
                                                       10000, &primary, &code, &answer, &len);
    free_args(nargs, args);
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
        /* Every argument is one the secondary was given after APP. */
        for (size_t i = 0; i < n; i++)
            printf("%s%s", i > 0 ? "|" : "", copydata_launch_arg(launch, i));
        printf("\n");
        fflush(stdout);
        int quit = n > 0 && strcmp(copydata_launch_arg(launch, 0), "quit") == 0;
        if ((st = copydata_launch_answer(launch, quit ? 0 : (int32_t)n, "ok", 2)))
            fprintf(stderr, "instance: answering: %s\n", copydata_last_error());
        if (quit)
            break;
    }
    copydata_instance_close(primary);
    return 0;
}
