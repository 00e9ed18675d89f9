// client_cpp: jimbot/client.h from C++ (what the knowledge-graph modules do).
// Built with -pedantic -Werror; run by test_client.py against the server: it
// prints the health status through the C API.
#include "jimbot/client.h"

#include <cstdio>
#include <string>
#include <vector>

int main(int argc, char **argv)
{
    jb_client_options opts{};
    opts.addr = argc > 1 ? argv[1] : JB_CLIENT_DEFAULT_ADDR;
    jb_client *c = nullptr;
    jb_error err{};
    if (jb_client_new(&opts, &c, &err) != JB_OK) {
        std::fprintf(stderr, "client_cpp: %s\n", err.message);
        return 1;
    }
    std::string payload = "from C++";
    std::vector<jb_header> headers{{"lang", "c++"}};
    jb_event ev{};
    ev.topic = "cpp.events";
    ev.type = "text";
    ev.payload = payload.data();
    ev.payload_len = payload.size();
    ev.headers = headers.data();
    ev.n_headers = headers.size();
    uint64_t seq = 0;
    jb_status st = jb_client_publish(c, &ev, 1, &seq, nullptr, nullptr, &err);
    jb_health h = JB_HEALTH_UNKNOWN;
    if (st == JB_OK)
        st = jb_client_health(c, "", &h, &err);
    if (st != JB_OK) {
        std::fprintf(stderr, "client_cpp: %s\n", err.message);
        jb_client_free(c);
        return 1;
    }
    std::printf("seq %llu health %s\n", static_cast<unsigned long long>(seq), jb_health_name(h));
    // The Infrastructure types from C++ too: a lease request that is freed
    // at once (it leaves the queue, or releases what it was granted).
    jb_client_gpu_options go{};
    go.component = "client_cpp";
    jb_client_gpu *lease = nullptr;
    if (jb_client_gpu_acquire_async(c, &go, nullptr, nullptr, &lease, &err) == JB_OK) {
        jb_client_gpu_event state{};
        jb_client_gpu_state(lease, &state);
        jb_client_gpu_free(lease);
    }
    jb_client_free(c);
    return 0;
}
