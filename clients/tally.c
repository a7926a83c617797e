/*
 * tally: the command-line client of the tally counter service.
 *
 *   tally inc NAME [DELTA]   publish an increment, print the new total the plugin answers
 *   tally get NAME...        print the retained totals
 *   tally watch NAME...      follow totals live (a table on a terminal, lines otherwise)
 *   tally stats              print every node's figures from $tally/stats/<node>
 *   tally health [NODE...]   ok, or which node is behind or has a dead peer
 *
 * This file only reads the command line and runs one command; tally_cli.h says which file
 * does what.
 */
#include <stdlib.h>

#include <mqtt_protocol.h>

#include "tally_cli.h"

static int run(const struct options *opt)
{
    switch (opt->command) {
    case CMD_INC:
        return cmd_inc(opt);
    case CMD_GET:
        return cmd_get(opt);
    case CMD_WATCH:
        return cmd_watch(opt);
    case CMD_STATS:
        return cmd_stats(opt);
    case CMD_HEALTH:
        return cmd_health(opt);
    }
    return EXIT_USAGE;
}

int main(int argc, char **argv)
{
    struct options opt = {
        .host = "127.0.0.1",
        .prefix = "counters",
        .timeout_s = 2.0,
        .protocol = MQTT_PROTOCOL_V5,
        .qos = 1,
        .peer_timeout_ms = 15000,
    };
    char **positional = check_alloc(calloc((size_t)argc + 1, sizeof(*positional)));
    int status = options_parse(argc, argv, &opt, positional);

    if (status < 0) {
        mosquitto_lib_init();
        status = run(&opt);
        mosquitto_lib_cleanup();
    }
    free(positional);
    return status;
}
