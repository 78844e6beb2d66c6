/* The Redis store's Cluster arithmetic without a server: CRC16 and key
 * slots (known vectors), MOVED/ASK errors, CLUSTER SLOTS answers (fed
 * through hiredis's own reader), and the cluster and sentinel URLs. */
#include <hiredis/hiredis.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "idem/redis.h"
#include "idem/store.h"
#include "internal.h"
#include "slots.h"
#include "url.h"

#define S_(s) (s), (sizeof(s) - 1)

/* The reply hiredis parses from RESP bytes (freeReplyObject it). */
static redisReply *parse_resp(const char *resp)
{
    redisReader *r = redisReaderCreate();
    void *reply = NULL;

    assert_non_null(r);
    assert_int_equal(redisReaderFeed(r, resp, strlen(resp)), REDIS_OK);
    assert_int_equal(redisReaderGetReply(r, &reply), REDIS_OK);
    redisReaderFree(r);
    assert_non_null(reply);
    return reply;
}

static void test_crc16_vectors(void **state)
{
    (void)state;
    assert_int_equal(idem__redis_crc16("123456789", 9), 0x31C3);
    assert_int_equal(idem__redis_crc16("", 0), 0);
    assert_int_equal(idem__redis_keyslot("123456789", 9), 12739);
    /* redis-cli CLUSTER KEYSLOT foo = 12182, bar = 5061 */
    assert_int_equal(idem__redis_keyslot("foo", 3), 12182);
    assert_int_equal(idem__redis_keyslot("bar", 3), 5061);
}

static void test_hash_tags(void **state)
{
    (void)state;
    assert_int_equal(idem__redis_keyslot(S_("{user1000}.following")),
                     idem__redis_keyslot(S_("{user1000}.followers")));
    assert_int_equal(idem__redis_keyslot(S_("{user1000}.following")),
                     idem__redis_keyslot(S_("user1000")));
    /* an empty tag, or no closing brace: the whole key */
    assert_int_equal(idem__redis_keyslot(S_("foo{}{bar}")),
                     idem__redis_crc16(S_("foo{}{bar}")) & 16383);
    assert_int_equal(idem__redis_keyslot(S_("foo{bar")),
                     idem__redis_crc16(S_("foo{bar")) & 16383);
    /* the first tag only, and a '}' inside the rest */
    assert_int_equal(idem__redis_keyslot(S_("a{b}c{d}")),
                     idem__redis_keyslot(S_("b")));
    assert_int_equal(idem__redis_keyslot(S_("idem:{ab:k}x}")),
                     idem__redis_keyslot(S_("ab:k")));
}

static void test_redirects(void **state)
{
    struct idem__redis_redirect rd;
    static const char *const bad[] = {
        "MOVED",           "MOVED 3999",  "MOVED 3999 host", "MOVED 16384 h:1",
        "MOVED x h:1",     "MOVED 1 h:0", "MOVED 1 h:65536", "ASK 1 h:",
        "ERR MOVED 1 h:1", "TRYAGAIN",    "MOVED  1 h:1",
    };
    size_t i;

    (void)state;
    assert_true(
        idem__redis_redirect_parse(S_("MOVED 3999 127.0.0.1:6381"), &rd));
    assert_false(rd.ask);
    assert_int_equal(rd.slot, 3999);
    assert_string_equal(rd.host, "127.0.0.1");
    assert_int_equal(rd.port, 6381);
    assert_true(idem__redis_redirect_parse(S_("ASK 0 ::1:7000"), &rd));
    assert_true(rd.ask);
    assert_int_equal(rd.slot, 0);
    assert_string_equal(rd.host, "::1");
    assert_int_equal(rd.port, 7000);
    assert_true(idem__redis_redirect_parse(S_("MOVED 16383 :7001"), &rd));
    assert_string_equal(rd.host, "");
    assert_int_equal(rd.slot, 16383);
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        rd.port = -1;
        assert_false(idem__redis_redirect_parse(bad[i], strlen(bad[i]), &rd));
        assert_int_equal(rd.port, -1);
    }
}

static void test_cluster_slots(void **state)
{
    const struct idem_env *env = idem_env_default();
    redisReply *r =
        parse_resp("*3\r\n"
                   "*4\r\n:0\r\n:5460\r\n"
                   "*3\r\n$9\r\n127.0.0.1\r\n:7000\r\n$1\r\na\r\n"
                   "*3\r\n$9\r\n127.0.0.1\r\n:7003\r\n$1\r\nd\r\n"
                   "*3\r\n:5461\r\n:10922\r\n"
                   "*2\r\n$1\r\n?\r\n:7001\r\n"
                   "*3\r\n:10923\r\n:16383\r\n"
                   "*4\r\n$9\r\n127.0.0.2\r\n:7002\r\n$1\r\nc\r\n*0\r\n");
    struct idem__redis_range *ranges = NULL;
    size_t n = 0;

    (void)state;
    assert_int_equal(idem__redis_slots_parse(env, r, &ranges, &n), IDEM_OK);
    assert_int_equal(n, 2); /* the middle one has no address */
    assert_int_equal(ranges[0].start, 0);
    assert_int_equal(ranges[0].end, 5460);
    assert_string_equal(ranges[0].host, "127.0.0.1");
    assert_int_equal(ranges[0].port, 7000);
    assert_int_equal(ranges[1].start, 10923);
    assert_int_equal(ranges[1].end, 16383);
    assert_string_equal(ranges[1].host, "127.0.0.2");
    assert_int_equal(ranges[1].port, 7002);
    idem__free(env, ranges);
    freeReplyObject(r);
}

static void test_cluster_slots_malformed(void **state)
{
    static const char *const bad[] = {
        "+OK\r\n",
        "-ERR This instance has cluster support disabled\r\n",
        "*1\r\n:1\r\n",
        "*1\r\n*3\r\n:5\r\n:4\r\n*2\r\n$1\r\nh\r\n:1\r\n",
        "*1\r\n*3\r\n:0\r\n:16384\r\n*2\r\n$1\r\nh\r\n:1\r\n",
        "*1\r\n*3\r\n:0\r\n:1\r\n*2\r\n$1\r\nh\r\n:0\r\n",
        "*1\r\n*3\r\n:0\r\n:1\r\n*1\r\n$1\r\nh\r\n",
        "*1\r\n*2\r\n:0\r\n:1\r\n",
    };
    const struct idem_env *env = idem_env_default();
    struct idem__redis_range *ranges = NULL;
    size_t i, n = 7;

    (void)state;
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        redisReply *r = parse_resp(bad[i]);

        assert_int_equal(idem__redis_slots_parse(env, r, &ranges, &n),
                         IDEM_EINVAL);
        freeReplyObject(r);
    }
    assert_null(ranges);
    assert_int_equal(n, 7);
    assert_int_equal(idem__redis_slots_parse(env, NULL, &ranges, &n),
                     IDEM_EINVAL);
}

static void test_cluster_urls(void **state)
{
    const struct idem_env *env = idem_env_default();
    struct idem__redis_addr a;

    (void)state;
    assert_int_equal(idem__redis_url_parse(
                         env, "redis-cluster://:pw@h1:7000,[::1]:7001,h3", &a),
                     IDEM_OK);
    assert_int_equal(a.mode, IDEM__REDIS_CLUSTER);
    assert_int_equal(a.nseeds, 3);
    assert_string_equal(a.seeds[0].host, "h1");
    assert_int_equal(a.seeds[0].port, 7000);
    assert_string_equal(a.seeds[1].host, "::1");
    assert_int_equal(a.seeds[1].port, 7001);
    assert_string_equal(a.seeds[2].host, "h3");
    assert_int_equal(a.seeds[2].port, 6379);
    assert_string_equal(a.password, "pw");
    idem__redis_addr_free(env, &a);
    assert_int_equal(
        idem__redis_url_parse(env, "redis-sentinel://s1,s2:26380/mymaster", &a),
        IDEM_OK);
    assert_int_equal(a.mode, IDEM__REDIS_SENTINEL);
    assert_int_equal(a.nseeds, 2);
    assert_int_equal(a.seeds[0].port, 26379);
    assert_int_equal(a.seeds[1].port, 26380);
    assert_string_equal(a.master, "mymaster");
    idem__redis_addr_free(env, &a);
}

static void test_cluster_urls_refused(void **state)
{
    static const char *const bad[] = {
        "redis-cluster://",        "redis-cluster://h:1,",
        "redis-cluster://,h:1",    "redis-cluster://h:1/0",
        "redis-cluster://h:0",     "redis-cluster://u@h:1",
        "redis-sentinel://s1:1",   "redis-sentinel://s1:1/",
        "redis-sentinel:///m",     "redis-sentinel://s1:1/a b",
        "redis-sentinel://s1:x/m", "redis-sentinel://s1:1,,s2:2/m",
        "redis-clusterx://h:1",
    };
    struct idem_store_redis_opts o = { 0 };
    struct idem_store *s;
    size_t i;

    (void)state;
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        o.url = bad[i];
        s = NULL;
        assert_int_equal(idem_store_redis_new(&o, &s), IDEM_EINVAL);
        assert_null(s);
    }
    o = (struct idem_store_redis_opts){ .url = "redis-cluster://h:1",
                                        .replicas = -1 };
    assert_int_equal(idem_store_redis_new(&o, &s), IDEM_EINVAL);
    o.replicas = 17;
    assert_int_equal(idem_store_redis_new(&o, &s), IDEM_EINVAL);
    o.replicas = 1;
    assert_int_equal(idem_store_redis_new(&o, &s), IDEM_OK);
    idem_store_free(s);
}

/* The node list before any attach: empty; on another store: refused. */
static void test_nodes_api(void **state)
{
    struct idem_store_redis_opts o = { .url = "redis-cluster://h:1" };
    struct idem_store_redis_node nodes[2];
    struct idem_store_redis_stats st;
    struct idem_store *s = NULL, *mem = NULL;
    size_t n = 9;

    (void)state;
    assert_int_equal(idem_store_redis_new(&o, &s), IDEM_OK);
    assert_int_equal(idem_store_redis_nodes(s, nodes, 2, &n), IDEM_OK);
    assert_int_equal(n, 0);
    assert_int_equal(idem_store_redis_nodes(s, NULL, 2, &n), IDEM_EINVAL);
    assert_int_equal(idem_store_redis_stats(s, &st), IDEM_OK);
    assert_int_equal(st.redirects + st.failovers + st.wait_timeouts, 0);
    assert_int_equal(idem_store_memory_new(NULL, &mem), IDEM_OK);
    assert_int_equal(idem_store_redis_nodes(mem, nodes, 2, &n), IDEM_EINVAL);
    idem_store_free(mem);
    idem_store_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc16_vectors),
        cmocka_unit_test(test_hash_tags),
        cmocka_unit_test(test_redirects),
        cmocka_unit_test(test_cluster_slots),
        cmocka_unit_test(test_cluster_slots_malformed),
        cmocka_unit_test(test_cluster_urls),
        cmocka_unit_test(test_cluster_urls_refused),
        cmocka_unit_test(test_nodes_api),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
