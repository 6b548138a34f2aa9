/* A Modbus server on Debian's libmodbus: an implementation nobody on the project wrote, for
 * roomd's Modbus driver to be tested against (TCP, or RTU on a serial line / pty).
 *
 *   libmodbus_server tcp 127.0.0.1 PORT UNIT
 *   libmodbus_server rtu /dev/pts/N BAUD PARITY UNIT
 *
 * The input registers hold the generic-iaq model's layout with fixed values (the tests know them);
 * holding registers accept writes; 8 coils and 8 discrete inputs for the digital I/O model. libmodbus serves one TCP client at a time, like the
 * RS-485-to-TCP gateways it is built into. */
#include <errno.h>
#include <modbus.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t stop = 0;
static void on_term(int sig) { (void)sig; stop = 1; }

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: %s tcp HOST PORT UNIT | rtu DEVICE BAUD PARITY UNIT\n", argv[0]);
        return 2;
    }
    signal(SIGTERM, on_term);
    int is_tcp = strcmp(argv[1], "tcp") == 0;
    modbus_t *ctx = is_tcp ? modbus_new_tcp(argv[2], atoi(argv[3]))
                           : modbus_new_rtu(argv[2], atoi(argv[3]), argv[4][0], 8, 1);
    int unit = atoi(is_tcp ? argv[4] : argv[5]);
    if (ctx == NULL) { fprintf(stderr, "modbus_new: %s\n", modbus_strerror(errno)); return 1; }
    modbus_set_slave(ctx, unit);
    /* 8 coils (relays, writable) and 8 discrete inputs: the io-8di-8do-room model's map. */
    modbus_mapping_t *map = modbus_mapping_new(8, 8, 512, 16);
    map->tab_input_bits[0] = 1;   /* DI1: the door contact reads open */
    map->tab_input_bits[1] = 0;   /* DI2: the window is closed */
    map->tab_bits[1] = 1;         /* DO2: the blinds relay is on (up) */
    /* generic-iaq, FC04: temperature ×100 (int16), humidity ×100, CO₂, lux (uint32), colour temp */
    map->tab_input_registers[0] = (uint16_t)(int16_t)-455; /* −4.55 °C: the sign must survive */
    map->tab_input_registers[1] = 4520;                    /* 45.2 % */
    map->tab_input_registers[2] = 734;                     /* ppm */
    map->tab_input_registers[3] = 1;                       /* lux, high word: 65,536 + 612 */
    map->tab_input_registers[4] = 612;
    map->tab_input_registers[5] = 4300;                    /* K */
    uint8_t query[MODBUS_TCP_MAX_ADU_LENGTH];
    int server = -1;
    if (is_tcp) {
        server = modbus_tcp_listen(ctx, 1);
        if (server < 0) { fprintf(stderr, "listen: %s\n", modbus_strerror(errno)); return 1; }
        printf("ready\n");
        fflush(stdout);
        while (!stop) {
            modbus_tcp_accept(ctx, &server);
            for (;;) {
                int rc = modbus_receive(ctx, query);
                if (rc > 0) modbus_reply(ctx, query, rc, map);
                else if (rc == -1) break; /* connection closed: wait for the next client */
            }
        }
    } else {
        if (modbus_connect(ctx) == -1) { fprintf(stderr, "open: %s\n", modbus_strerror(errno)); return 1; }
        printf("ready\n");
        fflush(stdout);
        while (!stop) {
            int rc = modbus_receive(ctx, query);
            if (rc > 0) modbus_reply(ctx, query, rc, map);
        }
    }
    modbus_mapping_free(map);
    modbus_close(ctx);
    modbus_free(ctx);
    return 0;
}
