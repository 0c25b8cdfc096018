from tests.conftest import login


def test_admin_can_sign_in_and_reach_dashboard(client, admin):
    login(client, admin)
    assert client.get("/admin/").status_code == 200
