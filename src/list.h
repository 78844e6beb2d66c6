/* One intrusive doubly linked list for every module (STYLE §19), in the
 * spirit of libuv's queue.h and nginx's ngx_queue.h: a list is a head node
 * whose next and prev point into the ring of its members' nodes; an empty
 * list, and a node on no list, point at themselves. Nothing allocates;
 * nothing locks: the owner of a list guards it. */
#ifndef IDEM_LIST_H
#define IDEM_LIST_H

#include <stdbool.h>
#include <stddef.h>

#include "internal.h" /* IDEM_CONTAINER_OF */

struct idem__list {
    struct idem__list *next, *prev;
};

/* A head, or a node, linked to nothing. */
static inline void idem__list_init(struct idem__list *l)
{
    l->next = l->prev = l;
}

static inline bool idem__list_empty(const struct idem__list *head)
{
    return head->next == head;
}

/* Whether node n is on a list (it was initialised, or removed, since). */
static inline bool idem__list_linked(const struct idem__list *n)
{
    return n->next != n;
}

/* Put n after pos (at the head's front when pos is the head). */
static inline void idem__list_insert_after(struct idem__list *pos,
                                           struct idem__list *n)
{
    n->prev = pos;
    n->next = pos->next;
    pos->next->prev = n;
    pos->next = n;
}

static inline void idem__list_push_front(struct idem__list *head,
                                         struct idem__list *n)
{
    idem__list_insert_after(head, n);
}

static inline void idem__list_push_back(struct idem__list *head,
                                        struct idem__list *n)
{
    idem__list_insert_after(head->prev, n);
}

/* Take n off its list; it links to nothing after. Harmless on a node
 * that is on no list. */
static inline void idem__list_remove(struct idem__list *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    idem__list_init(n);
}

/* The first node, or NULL for an empty list. */
static inline struct idem__list *idem__list_first(const struct idem__list *h)
{
    return idem__list_empty(h) ? NULL : h->next;
}

/* Move every node of from to the back of to, in order; from ends empty. */
static inline void idem__list_splice_back(struct idem__list *to,
                                          struct idem__list *from)
{
    if (idem__list_empty(from))
        return;
    from->next->prev = to->prev;
    to->prev->next = from->next;
    from->prev->next = to;
    to->prev = from->prev;
    idem__list_init(from);
}

#define idem__list_entry(node, type, member)                                   \
    IDEM_CONTAINER_OF(node, type, member)

/* Walk head's nodes; n may be removed (and freed) inside the body. */
#define idem__list_foreach_safe(n, tmp, head)                                  \
    for ((n) = (head)->next, (tmp) = (n)->next; (n) != (head);                 \
         (n) = (tmp), (tmp) = (n)->next)

#endif
