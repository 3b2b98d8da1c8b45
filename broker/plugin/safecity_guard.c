/*
 * safecity's broker guard: a deny-only Mosquitto 2.0 plugin (plugin API v5) for the
 * command topics, loaded BEFORE the dynamic-security plugin.
 *
 * Why: Mosquitto 2.0.11 logs a publish its ACLs refuse only at `log_type debug` (a line
 * per packet) and never logs a refused subscribe, so a device reaching for another
 * device's commands would be refused without a trace. This plugin refuses exactly that
 * traffic itself and logs each refusal at notice level as one stable line, which the
 * ingest's broker-log watcher turns into an `acl_denied` security event:
 *
 *   safecity-guard: denied <subscribe|publish> by client '<client id>' user '<username>' on '<topic>'
 *
 * It decides only these (topics safecity/v1/{city}/{district}/{kind}/{device}/cmd|result):
 *   - a device account (a username without the services' `_` prefix) subscribing to a
 *     filter that can match another device's cmd or result topic;
 *   - any account but the command role (`_command`, `_command.<city>`) publishing a command;
 *   - a device account publishing a result for another device.
 * Everything else is MOSQ_ERR_PLUGIN_DEFER: Mosquitto 2.0 asks the v5 ACL callbacks in
 * registration order and the first answer other than DEFER wins, so the dynamic-security
 * plugin still decides all other traffic (and refuses what it always refused).
 */
#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#define PREFIX "safecity/v1/"
#define LEVELS 7          /* safecity/v1/city/district/kind/device/leaf */
#define DEVICE_LEVEL 5
#define LEAF_LEVEL 6
#define SERVICE_MARK '_'
#define COMMAND_USER "_command"
#define SHOWN 256         /* the longest client id, username or topic a log line shows */

static mosquitto_plugin_id_t *plugin_id;

/* Level `index` of a topic or filter as [start, start + *len), or NULL past its end. */
static const char *level_at(const char *topic, int index, size_t *len)
{
	const char *start = topic;
	for(int i = 0; i < index; i++){
		start = strchr(start, '/');
		if(!start) return NULL;
		start++;
	}
	const char *end = strchr(start, '/');
	*len = end ? (size_t)(end - start) : strlen(start);
	return start;
}

static bool level_is(const char *topic, int index, const char *word)
{
	size_t len;
	const char *level = level_at(topic, index, &len);
	return level && len == strlen(word) && strncmp(level, word, len) == 0;
}

static int level_count(const char *topic)
{
	int count = 1;
	for(const char *c = topic; *c; c++) count += (*c == '/');
	return count;
}

/* A publish topic's leaf ("cmd" or "result") when it is a command/result topic. */
static const char *command_leaf(const char *topic)
{
	if(strncmp(topic, PREFIX, strlen(PREFIX)) != 0 || level_count(topic) != LEVELS) return NULL;
	if(level_is(topic, LEAF_LEVEL, "cmd")) return "cmd";
	if(level_is(topic, LEAF_LEVEL, "result")) return "result";
	return NULL;
}

/* Whether filter level `index` can match the literal `word` (NULL: any word). */
static bool filter_level_matches(const char *filter, int index, const char *word, bool *hash)
{
	size_t len;
	const char *level = level_at(filter, index, &len);
	if(!level) return false;
	if(len == 1 && level[0] == '#'){ *hash = true; return true; }
	if(len == 1 && level[0] == '+') return true;
	return word == NULL || (len == strlen(word) && strncmp(level, word, len) == 0);
}

/* Whether a subscription filter can match a cmd or result topic of a device not `own`. */
static bool reaches_foreign(const char *filter, const char *own)
{
	static const char *const words[LEVELS] = {"safecity", "v1", NULL, NULL, NULL, NULL, NULL};
	bool hash = false;
	if(strncmp(filter, "$share/", 7) == 0){
		const char *rest = strchr(filter + 7, '/');
		if(!rest) return false;
		filter = rest + 1;
	}
	for(int i = 0; i < LEVELS && !hash; i++){
		if(!filter_level_matches(filter, i, words[i], &hash)) return false;
		if(i == DEVICE_LEVEL && !hash && level_is(filter, i, own)) return false;
		if(i == LEAF_LEVEL && !hash && !level_is(filter, i, "+")
				&& !level_is(filter, i, "cmd") && !level_is(filter, i, "result")) return false;
	}
	return hash || level_count(filter) == LEVELS;
}

static bool is_command_role(const char *username)
{
	size_t n = strlen(COMMAND_USER);
	return strncmp(username, COMMAND_USER, n) == 0 && (username[n] == '\0' || username[n] == '.');
}

/* At most SHOWN bytes of `text`, quotes and control characters as '?' (one line, parseable). */
static void shown(char *out, const char *text)
{
	size_t i = 0;
	for(; text && text[i] && i < SHOWN; i++){
		unsigned char c = (unsigned char)text[i];
		out[i] = (c < 0x20 || c == 0x7f || c == '\'') ? '?' : (char)c;
	}
	out[i] = '\0';
}

static int deny(const struct mosquitto_evt_acl_check *ed, const char *access, const char *user)
{
	char id[SHOWN + 1], name[SHOWN + 1], topic[SHOWN + 1];
	shown(id, mosquitto_client_id(ed->client));
	shown(name, user);
	shown(topic, ed->topic);
	mosquitto_log_printf(MOSQ_LOG_NOTICE,
			"safecity-guard: denied %s by client '%s' user '%s' on '%s'", access, id, name, topic);
	return MOSQ_ERR_ACL_DENIED;
}

static int acl_check(int event, void *event_data, void *userdata)
{
	(void)event; (void)userdata;
	struct mosquitto_evt_acl_check *ed = event_data;
	const char *user = mosquitto_client_username(ed->client);
	if(!user || !ed->topic) return MOSQ_ERR_PLUGIN_DEFER;
	bool device = user[0] != SERVICE_MARK;
	if(ed->access == MOSQ_ACL_SUBSCRIBE){
		return device && reaches_foreign(ed->topic, user)
			? deny(ed, "subscribe", user) : MOSQ_ERR_PLUGIN_DEFER;
	}
	if(ed->access != MOSQ_ACL_WRITE) return MOSQ_ERR_PLUGIN_DEFER;
	const char *leaf = command_leaf(ed->topic);
	if(!leaf) return MOSQ_ERR_PLUGIN_DEFER;
	if(strcmp(leaf, "cmd") == 0){
		return is_command_role(user) ? MOSQ_ERR_PLUGIN_DEFER : deny(ed, "publish", user);
	}
	return device && !level_is(ed->topic, DEVICE_LEVEL, user)
		? deny(ed, "publish", user) : MOSQ_ERR_PLUGIN_DEFER;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for(int i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *options, int option_count)
{
	(void)userdata; (void)options; (void)option_count;
	plugin_id = identifier;
	mosquitto_log_printf(MOSQ_LOG_INFO, "safecity-guard: guarding the command topics");
	return mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, acl_check, NULL, NULL);
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata; (void)options; (void)option_count;
	return mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, acl_check, NULL);
}
