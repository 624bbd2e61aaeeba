# INSTRUCTION: Refactor to use async/await

import json
import time
import requests

API_URL = "https://api.example.com"
TIMEOUT = 10


def fetch_json(path, params=None):
    url = f"{API_URL}/{path}"
    for attempt in range(3):
        response = requests.get(url, params=params, timeout=TIMEOUT)
        if response.status_code < 500:
            response.raise_for_status()
            return response.json()
        time.sleep(2 ** attempt)
    raise RuntimeError(f"giving up on {url}")


def fetch_user(user_id):
    data = fetch_json(f"users/{user_id}")
    return {"id": data["id"], "name": data["name"], "email": data["email"]}


def fetch_orders(user_id):
    orders = []
    page = 1
    while True:
        batch = fetch_json("orders", params={"user": user_id, "page": page})
        if not batch:
            break
        orders.extend(batch)
        page += 1
    return orders


def save_report(path, user, orders):
    total = sum(order["amount"] for order in orders)
    with open(path, "w") as f:
        json.dump({"user": user, "orders": len(orders), "total": total}, f)
    return total


def notify(user, total):
    body = f"Hello {user['name']}, your report total is {total:.2f}."
    response = requests.post(
        f"{API_URL}/notifications",
        json={"to": user["email"], "body": body},
        timeout=TIMEOUT,
    )
    response.raise_for_status()
    return response.status_code == 202


def build_report(user_id, path):
    user = fetch_user(user_id)
    orders = fetch_orders(user_id)
    total = save_report(path, user, orders)
    print(f"{user['name']}: {len(orders)} orders, {total:.2f} total")
    notify(user, total)
    return total


import json
import time
import requests

API_URL = "https://api.example.com"
TIMEOUT = 10


def fetch_json(path, params=None):
    url = f"{API_URL}/{path}"
    for attempt in range(3):
        response = requests.get(url, params=params, timeout=TIMEOUT)
        if response.status_code < 500:
            response.raise_for_status()
            return response.json()
        time.sleep(2 ** attempt)
    raise RuntimeError(f"giving up on {url}")


def fetch_user(user_id):
    data = fetch_json(f"users/{user_id}")
    return {"id": data["id"], "name": data["name"], "email": data["email"]}


def fetch_orders(user_id):
    orders = []
    page = 1
    while True:
        batch = fetch_json("orders", params={"user": user_id, "page": page})
        if not batch:
            break
        orders.extend(batch)
        page += 1
    return orders


def save_report(path, user, orders):
    total = sum(order["amount"] for order in orders)
    with open(path, "w") as f:
        json.dump({"user": user, "orders": len(orders), "total": total}, f)
    return total


def notify(user, total):
    body = f"Hello {user['name']}, your report total is {total:.2f}."
    response = requests.post(
        f"{API_URL}/notifications",
        json={"to": user["email"], "body": body},
        timeout=TIMEOUT,
    )
    response.raise_for_status()
    return response.status_code == 202


def build_report(user_id, path):
    user = fetch_user(user_id)
    orders = fetch_orders(user_id)
    total = save_report(path, user, orders)
    print(f"{user['name']}: {len(orders)} orders, {total:.2f} total")
    notify(user, total)
    return total


import json
import time
import requests

API_URL = "https://api.example.com"
TIMEOUT = 10


def fetch_json(path, params=None):
    url = f"{API_URL}/{path}"
    for attempt in range(3):
        response = requests.get(url, params=params, timeout=TIMEOUT)
        if response.status_code < 500:
            response.raise_for_status()
            return response.json()
        time.sleep(2 ** attempt)
    raise RuntimeError(f"giving up on {url}")


def fetch_user(user_id):
    data = fetch_json(f"users/{user_id}")
    return {"id": data["id"], "name": data["name"], "email": data["email"]}


def fetch_orders(user_id):
    orders = []
    page = 1
    while True:
        batch = fetch_json("orders", params={"user": user_id, "page": page})
        if not batch:
            break
        orders.extend(batch)
        page += 1
    return orders


def save_report(path, user, orders):
    total = sum(order["amount"] for order in orders)
    with open(path, "w") as f:
        json.dump({"user": user, "orders": len(orders), "total": total}, f)
    return total


def notify(user, total):
    body = f"Hello {user['name']}, your report total is {total:.2f}."
    response = requests.post(
        f"{API_URL}/notifications",
        json={"to": user["email"], "body": body},
        timeout=TIMEOUT,
    )
    response.raise_for_status()
    return response.status_code == 202


def build_report(user_id, path):
    user = fetch_user(user_id)
    orders = fetch_orders(user_id)
    total = save_report(path, user, orders)
    print(f"{user['name']}: {len(orders)} orders, {total:.2f} total")
    notify(user, total)
    return total


import json
import time
import requests

API_URL = "https://api.example.com"
TIMEOUT = 10


def fetch_json(path, params=None):
    url = f"{API_URL}/{path}"
    for attempt in range(3):
        response = requests.get(url, params=params, timeout=TIMEOUT)
        if response.status_code < 500:
            response.raise_for_status()
            return response.json()
        time.sleep(2 ** attempt)
    raise RuntimeError(f"giving up on {url}")


def fetch_user(user_id):
    data = fetch_json(f"users/{user_id}")
    return {"id": data["id"], "name": data["name"], "email": data["email"]}


def fetch_orders(user_id):
    orders = []
    page = 1
    while True:
        batch = fetch_json("orders", params={"user": user_id, "page": page})
        if not batch:
            break
        orders.extend(batch)
        page += 1
    return orders


def save_report(path, user, orders):
    total = sum(order["amount"] for order in orders)
    with open(path, "w") as f:
        json.dump({"user": user, "orders": len(orders), "total": total}, f)
    return total


def notify(user, total):
    body = f"Hello {user['name']}, your report total is {total:.2f}."
    response = requests.post(
        f"{API_URL}/notifications",
        json={"to": user["email"], "body": body},
        timeout=TIMEOUT,
    )
    response.raise_for_status()
    return response.status_code == 202


def build_report(user_id, path):
    user = fetch_user(user_id)
    orders = fetch_orders(user_id)
    total = save_report(path, user, orders)
    print(f"{user['name']}: {len(orders)} orders, {total:.2f} total")
    notify(user, total)
    return total


import json
import time
import requests

API_URL = "https://api.example.com"
TIMEOUT = 10


def fetch_json(path, params=None):
    url = f"{API_URL}/{path}"
    for attempt in range(3):
        response = requests.get(url, params=params, timeout=TIMEOUT)
        if response.status_code < 500:
            response.raise_for_status()
            return response.json()
        time.sleep(2 ** attempt)
    raise RuntimeError(f"giving up on {url}")


def fetch_user(user_id):
    data = fetch_json(f"users/{user_id}")
    return {"id": data["id"], "name": data["name"], "email": data["email"]}


def fetch_orders(user_id):
    orders = []
    page = 1
    while True:
        batch = fetch_json("orders", params={"user": user_id, "page": page})
        if not batch:
            break
        orders.extend(batch)
        page += 1
    return orders


def save_report(path, user, orders):
    total = sum(order["amount"] for order in orders)
    with open(path, "w") as f:
        json.dump({"user": user, "orders": len(orders), "total": total}, f)
    return total


def notify(user, total):
    body = f"Hello {user['name']}, your report total is {total:.2f}."
    response = requests.post(
        f"{API_URL}/notifications",
        json={"to": user["email"], "body": body},
        timeout=TIMEOUT,
    )
    response.raise_for_status()
    return response.status_code == 202


def build_report(user_id, path):
    user = fetch_user(user_id)
    orders = fetch_orders(user_id)
    total = save_report(path, user, orders)
    print(f"{user['name']}: {len(orders)} orders, {total:.2f} total")
    notify(user, total)
    return total
