/* Status names and messages, generated from IDEM_STATUS_MAP. */
#include "idem/idem.h"

#define STATUS_CASE_TEXT(name, value, text)                                    \
    case IDEM_##name:                                                          \
        return text;
#define STATUS_CASE_NAME(name, value, text)                                    \
    case IDEM_##name:                                                          \
        return #name;

const char *idem_strerror(int status)
{
    switch (status) {
        IDEM_STATUS_MAP(STATUS_CASE_TEXT)
    }
    return "unknown status";
}

const char *idem_status_name(int status)
{
    switch (status) {
        IDEM_STATUS_MAP(STATUS_CASE_NAME)
    }
    return "UNKNOWN";
}

const char *idem_version(void)
{
    return IDEM_VERSION_STRING;
}
